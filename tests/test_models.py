"""Base-model preparation under races and tampering."""

from __future__ import annotations

import os
import threading

from tunegate.models import MARKER, _cached_sha, materialize_embedded


def test_two_runs_preparing_the_embedded_model_at_once_make_it_once(tmp_path):
    target = tmp_path / "models" / "smollm2-135m-instruct"
    (target.parent / (target.name + ".partial-999999")).mkdir(parents=True)  # a killed run's
    target.mkdir()  # a copy without its marker: never completed
    errors: list[BaseException] = []

    def prepare() -> None:
        try:
            materialize_embedded(target)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []  # was: OSError: Directory not empty
    assert (target / MARKER).is_file() and list(target.glob("*.safetensors"))
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name, target.name + ".lock"]


def test_the_weights_hash_is_recomputed_when_bytes_change_under_the_same_size_and_mtime(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x00" * 4096)
    first = _cached_sha(tmp_path)
    assert _cached_sha(tmp_path) == first  # cached
    st = weights.stat()
    with weights.open("r+b") as f:  # flip bytes in place, same size
        f.seek(100)
        f.write(b"\xff\xff")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # and put the old mtime back
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    assert _cached_sha(tmp_path) != first
