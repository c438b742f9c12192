"""`POST /v1/messages/count_tokens`: relayed to an Anthropic-format upstream serving the model, else estimated here.

Claude Code and the anthropic SDK ask for token counts; MegaLLM and OpenAI-format upstreams have no such route. A
client that gets an error here stalls or gives up, so the count always answers: from the upstream when one speaks
Anthropic's format (untranslated, with a pool key), otherwise, or when that upstream answers 404/405/501, from a
local estimate (`core.request.ChatRequest.prompt_tokens`, about four bytes of JSON per token). A local answer
takes no key lease and is counted in metrics (`megagate_local_answers_total`).
"""

from __future__ import annotations

import msgspec

from megagate.asgi import ASGIApp, Receive, Scope, Send
from megagate.core.errors import InvalidRequest, UpstreamStatus
from megagate.endpoints.relay import Relay
from megagate.state import RequestState, get_state

# An upstream without the route: answered here instead.
NOT_OFFERED = frozenset({404, 405, 501})
_encoder = msgspec.json.Encoder()


class _Count(msgspec.Struct):
    input_tokens: int


class CountTokensApp:
    """Count with `proxy` (an UpstreamProxy) where an upstream can, estimate locally where none can: the target is
    RotationMiddleware's (`state.target`), None when no Anthropic-format upstream serves the model."""

    def __init__(self, proxy: ASGIApp) -> None:
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = get_state(scope)
        if state is None:
            raise InvalidRequest("This route expects a JSON request (no request state was prepared).")
        if state.target is None:
            await _answer_locally(state, send, "no_upstream")
            return
        try:
            await self.proxy(scope, receive, send)
        except UpstreamStatus as error:
            if error.upstream_status not in NOT_OFFERED or state.response_started:
                raise
            await _answer_locally(state, send, f"upstream_{error.upstream_status}")


async def _answer_locally(state: RequestState, send: Send, reason: str) -> None:
    state.local_answer = reason
    answer = state.answer = Relay(send)
    body = _encoder.encode(_Count(state.request.prompt_tokens))
    await answer.plain(200, body, [(b"content-type", b"application/json"), (b"x-megagate-estimate", b"true")], None)
