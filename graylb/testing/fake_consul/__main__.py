"""``python -m graylb.testing.fake_consul [--port 8500]``: run FakeConsul on 127.0.0.1 until interrupted."""

from .server import main

if __name__ == "__main__":
    raise SystemExit(main())
