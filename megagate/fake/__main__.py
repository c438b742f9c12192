"""`python -m megagate.fake --port P`: the fake upstream on its own, for demos and benchmarks."""

from __future__ import annotations

import argparse

from megagate.fake import WORDS, FakeUpstream
from megagate.fake import __doc__ as fake_doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m megagate.fake", description=fake_doc.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--tps", type=float, default=0.0, help="tokens per second in streams (0: as fast as possible)")
    parser.add_argument("--length", type=int, default=len(WORDS), help="words per answer")
    args = parser.parse_args(argv)
    from megagate.serve import serve_apps

    fake = FakeUpstream(ttft=args.ttft, tokens_per_second=args.tps, length=args.length)
    serve_apps([(fake, args.host, args.port)])


if __name__ == "__main__":
    main()
