"""The checks the Python client scripts count: each raises on a wrong
answer, and `done()` prints "ok <n>", the line the Rust test reads."""

_count = 0


def check(name, got, want):
    global _count
    if got != want:
        raise AssertionError(f"{name}: got {got!r}, want {want!r}")
    _count += 1


def done():
    print(f"ok {_count}")
