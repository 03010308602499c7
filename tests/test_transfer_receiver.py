"""The receiving side over real HTTP from a real peer file server: one pass that writes and hashes, resume from the
temp file asking only for the missing bytes, the SHA256 check before the rename, never over another file, and
each fault with its reason and nothing wrong left in a model folder."""
import hashlib
import random
import shutil
import threading
import time
from pathlib import Path

import pytest

from modelsync.shared.scan.hashing import hash_file
from modelsync.shared.transfer.destination import safe_relative_name
from modelsync.shared.transfer.failures import TransferFailed
from modelsync.shared.transfer.partfiles import part_name, remove_orphaned_parts
from modelsync.shared.transfer.peer_source import PeerSource
from modelsync.shared.transfer.receiver import ReceiveOptions, receive
from modelsync.shared.transfer.stream_hash import StreamHasher
from support_transfer import DEST_ID, MIB, make_source_node, run_peer, write_large_safetensors

LORA = "Lora/style.safetensors"
FAST_RETRIES = ReceiveOptions(floor_bytes=0, retry_delay_seconds=0.05, progress_interval_seconds=0)


@pytest.fixture
def node(tmp_path):
    return make_source_node(tmp_path, {LORA: 6})


@pytest.fixture
def peer(node):
    with run_peer(node) as running:
        yield running


@pytest.fixture
def dest(tmp_path) -> Path:
    root = tmp_path / "node-b" / "models"
    root.mkdir(parents=True)
    return root


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def fail(source, dest, rel_name=LORA, **kwargs) -> TransferFailed:
    with pytest.raises(TransferFailed) as failed:
        receive(source, str(dest), rel_name, **kwargs)
    return failed.value


# --- hashing while writing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,mib", [("big.safetensors", 3), ("small.safetensors", 0.5), ("big.ckpt", 3)])
def test_stream_hashes_equal_the_scanners_whatever_the_blocks(tmp_path, name, mib):
    path = write_large_safetensors(tmp_path / name, mib)
    data = path.read_bytes()
    hasher = StreamHasher(addnet=name.endswith(".safetensors"))
    position, blocks = 0, random.Random(7)
    while position < len(data):  # blocks of 1 byte to 2 MiB, crossing the header and AutoV1 boundaries anywhere
        step = blocks.choice([1, 3, 7, 4096, 65_537, 2 * MIB])
        hasher.update(data[position : position + step])
        position += step
    assert hasher.finish() == hash_file(str(path))


@pytest.mark.parametrize("data", [b"", b"1234567", b"\x08" + b"\x00" * 7 + b"x" * 8, b"\xff" * 8 + b"abc"])
def test_stream_hashes_of_short_or_odd_files_equal_the_scanners(tmp_path, data):
    path = tmp_path / "odd.safetensors"
    path.write_bytes(data)
    hasher = StreamHasher(addnet=True)
    for byte in data:
        hasher.update(bytes([byte]))
    assert hasher.finish() == hash_file(str(path))


# --- the happy path ----------------------------------------------------------------------------------------------

def test_a_copy_lands_verified_with_every_hash_and_progress(node, peer, dest):
    reports = []
    received = receive(peer.source(node, LORA), str(dest), LORA, options=FAST_RETRIES, progress=reports.append)
    target = dest / LORA
    assert received.path == str(target) and received.rel_name == LORA and not received.renamed
    assert target.read_bytes() == node.files[LORA].read_bytes()
    assert received.hashes == hash_file(str(node.files[LORA])) and received.hashes.autov1 and received.hashes.autov3
    assert (received.size, received.resumed_from, received.bytes_fetched) == (node.size(LORA), 0, node.size(LORA))
    assert received.mtime_ns == target.stat().st_mtime_ns
    assert files_under(dest) == [LORA]  # no temp file left
    assert [r.bytes_done for r in reports] == sorted(r.bytes_done for r in reports)
    last = reports[-1]
    assert (last.bytes_done, last.size, last.eta_seconds) == (node.size(LORA), node.size(LORA), 0)
    assert last.speed_bps > 0
    assert [r.range for r in peer.served] == [None]


def test_a_dropped_connection_resumes_asking_only_for_the_missing_bytes(node, peer, dest):
    peer.faults.drops, peer.faults.drop_after = 2, 2 * MIB
    received = receive(peer.source(node, LORA), str(dest), LORA, options=FAST_RETRIES)
    assert received.hashes.sha256 == node.sha256[LORA]
    assert [r.status for r in peer.served] == [200, 206, 206]
    assert [r.range for r in peer.served] == [None, f"bytes={2 * MIB}-", f"bytes={4 * MIB}-"]
    assert peer.served[1].if_range == f'"{node.sha256[LORA]}"'
    assert peer.body_bytes < 1.3 * node.size(LORA)
    assert received.bytes_fetched == node.size(LORA)


def test_cancel_keeps_the_temp_file_and_the_next_run_resumes_from_it(node, peer, dest):
    cancel = threading.Event()

    def cancel_after_two_mib(progress):
        if progress.bytes_done >= 2 * MIB:
            cancel.set()

    failed = fail(peer.source(node, LORA), dest, options=FAST_RETRIES, progress=cancel_after_two_mib, cancel=cancel)
    assert failed.reason == "cancelled"
    temp = dest / "Lora" / part_name(node.sha256[LORA])
    kept = temp.stat().st_size
    assert 2 * MIB <= kept < node.size(LORA)
    assert files_under(dest) == [f"Lora/{temp.name}"]

    received = receive(peer.source(node, LORA), str(dest), LORA, options=FAST_RETRIES)  # a new process would do this
    assert received.resumed_from == kept
    assert received.bytes_fetched == node.size(LORA) - kept
    assert received.hashes == hash_file(str(node.files[LORA]))  # AutoV1/AutoV3 right across the re-hashed part
    assert len(peer.served) == 2 and peer.served[-1].range == f"bytes={kept}-"
    assert peer.served[-1].body_bytes == node.size(LORA) - kept  # only the missing bytes were asked for and sent
    assert files_under(dest) == [LORA]


def test_a_whole_temp_file_left_by_a_crash_before_the_rename_is_verified_and_placed(node, peer, dest):
    (dest / "Lora").mkdir()
    shutil.copy(node.files[LORA], dest / "Lora" / part_name(node.sha256[LORA]))
    received = receive(peer.source(node, LORA), str(dest), LORA, options=FAST_RETRIES)
    assert (received.resumed_from, received.bytes_fetched) == (node.size(LORA), 0)
    assert peer.served == [] and files_under(dest) == [LORA]


def test_a_source_that_ignores_range_restarts_from_zero_and_still_verifies(node, peer, dest):
    peer.faults.drops, peer.faults.drop_after, peer.faults.ignore_range = 1, 2 * MIB, True
    received = receive(peer.source(node, LORA), str(dest), LORA, options=FAST_RETRIES)
    assert received.hashes.sha256 == node.sha256[LORA]
    assert [r.status for r in peer.served] == [200, 200]
    assert (dest / LORA).read_bytes() == node.files[LORA].read_bytes()


def test_a_partial_answer_that_does_not_continue_the_temp_file_restarts_from_zero(node, peer, dest):
    peer.faults.drops, peer.faults.drop_after, peer.faults.range_from_zero = 1, 2 * MIB, True
    received = receive(peer.source(node, LORA), str(dest), LORA, options=FAST_RETRIES)
    assert [r.status for r in peer.served] == [200, 206, 200]  # the 206 from byte 0 is closed, the file asked again
    assert received.hashes.sha256 == node.sha256[LORA]


def test_a_source_offering_another_size_than_the_order_fails_changed(node, peer, dest):
    source = peer.source(node, LORA)
    source.size -= 1
    assert fail(source, dest, options=FAST_RETRIES).reason == "changed"
    assert files_under(dest) == []


def test_a_temp_file_longer_than_the_file_is_discarded(node, peer, dest):
    (dest / "Lora").mkdir()
    (dest / "Lora" / part_name(node.sha256[LORA])).write_bytes(b"x" * (node.size(LORA) + 1))
    received = receive(peer.source(node, LORA), str(dest), LORA, options=FAST_RETRIES)
    assert received.resumed_from == 0 and received.hashes.sha256 == node.sha256[LORA]


def test_the_grant_never_shows_in_a_sources_repr(node, peer):
    source = peer.source(node, LORA)
    assert source.grant not in repr(source) and node.sha256[LORA] in repr(source)


# --- faults --------------------------------------------------------------------------------------------------------

def test_wrong_bytes_fail_with_hash_mismatch_and_leave_no_file(node, peer, dest):
    peer.faults.corrupt = True
    assert fail(peer.source(node, LORA), dest, options=FAST_RETRIES).reason == "hash_mismatch"
    assert files_under(dest) == []


def test_a_stream_longer_than_the_file_is_cut_and_fails(node, peer, dest):
    peer.faults.extra = b"trailing bytes"
    assert fail(peer.source(node, LORA), dest, options=FAST_RETRIES).reason == "too_long"
    assert files_under(dest) == []


def test_not_enough_disk_fails_before_anything_is_written_or_asked(node, peer, dest):
    floor = shutil.disk_usage(dest).free + 1
    failed = fail(peer.source(node, LORA), dest, options=ReceiveOptions(floor_bytes=floor))
    assert failed.reason == "disk_full"
    assert list(dest.iterdir()) == [] and peer.served == []


def test_an_unavailable_root_is_never_filled(node, peer, dest):
    missing = dest / "unmounted-share"
    assert fail(peer.source(node, LORA), missing, options=FAST_RETRIES).reason == "root_unavailable"
    assert not missing.exists() and peer.served == []


@pytest.mark.parametrize("grant_kwargs,presented_by", [({"ttl_seconds": -120}, DEST_ID), ({}, "node-c")])
def test_a_refused_grant_fails_not_allowed_and_leaves_nothing(node, peer, dest, grant_kwargs, presented_by):
    source = peer.source(node, LORA, **grant_kwargs)  # a grant for node-b
    source.node_id = presented_by
    failed = fail(source, dest, options=FAST_RETRIES)
    assert failed.reason == "not_allowed" and not failed.retryable
    assert files_under(dest) == []
    assert all(r.body_bytes < 300 for r in peer.served)


def test_a_file_changed_at_the_source_fails_changed_and_the_source_rescans(node, peer, dest):
    with open(node.files[LORA], "ab") as f:
        f.write(b"edited")
    assert fail(peer.source(node, LORA), dest, options=FAST_RETRIES).reason == "changed"
    assert peer.rescans and files_under(dest) == []


def test_an_unreachable_source_fails_source_gone_after_the_attempts(node, dest):
    with run_peer(node) as stopped:
        base_url = stopped.base_url
    source = PeerSource(base_url, node.sha256[LORA], node.size(LORA), DEST_ID, node.grant(LORA), timeout=(1.0, 1.0))
    failed = fail(source, dest, options=ReceiveOptions(floor_bytes=0, max_attempts=3, retry_delay_seconds=0.01))
    assert failed.reason == "source_gone"
    assert files_under(dest) == []


def test_a_stalled_stream_counts_as_dropped_and_keeps_what_arrived(node, peer, dest):
    peer.faults.bytes_per_second = 64 * 1024  # 1 s per 64 KiB block, longer than the read timeout
    source = peer.source(node, LORA)
    source.timeout = (5.0, 0.3)
    failed = fail(source, dest, options=ReceiveOptions(floor_bytes=0, max_attempts=2, retry_delay_seconds=0.01))
    assert failed.reason == "source_gone"
    assert len(peer.served) >= 2


def test_the_bandwidth_limit_holds_the_rate_down(node, peer, dest):
    limit = 4 * MIB
    started = time.monotonic()
    receive(peer.source(node, LORA), str(dest), LORA, options=ReceiveOptions(floor_bytes=0, bandwidth_bps=limit))
    assert time.monotonic() - started >= 0.9 * node.size(LORA) / limit


# --- names ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("given,safe", [
    ("Lora/style.safetensors", "Lora/style.safetensors"),
    ("Lora\\sub\\style.safetensors", "Lora/sub/style.safetensors"),
    ("../../etc/cron.d/x.safetensors", "etc/cron.d/x.safetensors"),
    ("/abs/path/x.safetensors", "abs/path/x.safetensors"),
    ("C:\\Users\\me\\x.safetensors", "Users/me/x.safetensors"),
    ("c:x.safetensors", "x.safetensors"),
    ("a/./b//..\\c.safetensors", "a/b/c.safetensors"),
    (".hidden/.x.safetensors", "hidden/x.safetensors"),
    ("name:stream.safetensors", "name_stream.safetensors"),
    ("tab\there/x.safetensors ", "tab_here/x.safetensors"),
])
def test_relative_names_are_made_safe(given, safe):
    assert safe_relative_name(given) == safe


@pytest.mark.parametrize("given", ["", "..", "../..", "/", "C:\\", "./.", " . "])
def test_a_name_with_nothing_left_is_refused(given):
    with pytest.raises(TransferFailed) as failed:
        safe_relative_name(given)
    assert failed.value.reason == "bad_name"


def test_an_unsafe_name_lands_under_the_root(node, peer, dest):
    received = receive(peer.source(node, LORA), str(dest), "..\\..\\escape.safetensors", options=FAST_RETRIES)
    assert received.path == str(dest / "escape.safetensors") and received.rel_name == "escape.safetensors"
    assert files_under(dest) == ["escape.safetensors"]


def test_another_file_under_the_name_is_never_replaced(node, peer, dest):
    (dest / "Lora").mkdir()
    (dest / LORA).write_bytes(b"the operator's own file")
    received = receive(peer.source(node, LORA), str(dest), LORA, options=FAST_RETRIES)
    assert received.renamed and received.rel_name == "Lora/style_2.safetensors"
    assert (dest / LORA).read_bytes() == b"the operator's own file"
    assert hashlib.sha256((dest / "Lora/style_2.safetensors").read_bytes()).hexdigest() == node.sha256[LORA]


def test_the_same_file_already_there_is_not_fetched_again(node, peer, dest):
    (dest / "Lora").mkdir()
    shutil.copy(node.files[LORA], dest / LORA)
    received = receive(peer.source(node, LORA), str(dest), LORA, options=FAST_RETRIES)
    assert received.already_present and received.bytes_fetched == 0 and not received.renamed
    assert peer.served == [] and files_under(dest) == [LORA]


# --- start-up ------------------------------------------------------------------------------------------------------

def test_orphaned_temp_files_are_removed_and_only_ours(tmp_path):
    roots = [tmp_path / "Lora", tmp_path / "Stable-diffusion"]
    orphan = roots[0] / "deep" / part_name("1" * 64)
    kept = roots[1] / part_name("2" * 64)
    others = [roots[0] / "download.safetensors.part", roots[0] / ".modelsync-short.part",
              roots[1] / "model.safetensors", tmp_path / "outside" / part_name("3" * 64)]
    for path in [orphan, kept, *others]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    removed = remove_orphaned_parts([str(r) for r in roots], keep=["2" * 64])
    assert removed == [str(orphan)]
    assert not orphan.exists() and kept.exists() and all(p.exists() for p in others)
