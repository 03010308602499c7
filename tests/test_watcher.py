"""File watching: a model file that appears, changes or goes is seen soon (debounced), partial downloads are not,
network shares are left to the timer, and a watcher that cannot watch says so once and stops."""
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import model_factory

from modelsync.shared.node import watcher as watcher_module
from modelsync.shared.node.watcher import ADDED, DELETED, FolderWatcher, file_system_of, is_relevant, is_relevant_change, plan


def wait_until(event: threading.Event, timeout: float = 15) -> bool:
    return event.wait(timeout)


class Collector:
    def __init__(self):
        self.calls: list[set[str]] = []
        self.event = threading.Event()

    def __call__(self, paths):
        self.calls.append(paths)
        self.event.set()


@contextlib.contextmanager
def watching(folder: Path) -> Iterator[Collector]:
    """A watcher of `folder` whose watch is in place: a probe file written into it has been seen (however loaded the
    machine); stopped on exit."""
    collector = Collector()
    watcher = FolderWatcher([str(folder)], collector)
    watcher.start()
    try:
        (folder / "probe.safetensors").write_bytes(b"probe")
        assert wait_until(collector.event)
        collector.calls.clear()
        collector.event.clear()
        yield collector
    finally:
        watcher.stop()


def test_which_paths_are_changes():
    assert is_relevant("/m/Lora/hero.safetensors") and is_relevant("/m/Lora/hero.preview.jpeg")
    assert is_relevant("/m/Lora/hero.civitai.info") and is_relevant("/m/x.GGUF")
    for partial in ("hero.safetensors.part", "x.tmp", "x.safetensors.downloading", "x.safetensors.aria2",
                    ".modelsync-" + "a" * 64 + ".part", ".hidden.safetensors", "notes.txt"):
        assert not is_relevant(f"/m/Lora/{partial}"), partial


def test_a_folder_that_appears_or_goes_is_a_change(tmp_path):
    import watchfiles

    assert (ADDED, DELETED) == (watchfiles.Change.added, watchfiles.Change.deleted)
    (tmp_path / "pack").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert is_relevant_change(ADDED, str(tmp_path / "pack"))
    assert not is_relevant_change(ADDED, str(tmp_path / "notes.txt"))  # a file, not a model's
    assert is_relevant_change(DELETED, str(tmp_path / "gone-pack"))  # gone: it may have been a folder
    assert not is_relevant_change(DELETED, str(tmp_path / ".cache")) and not is_relevant_change(DELETED, "/m/x.part")
    assert not is_relevant_change(watchfiles.Change.modified, str(tmp_path / "pack"))


def test_network_shares_are_left_to_the_timer(tmp_path):
    (tmp_path / "nas").mkdir()
    (tmp_path / "local").mkdir()
    mounts = [("/", "ext4"), (str(tmp_path / "nas"), "nfs4")]
    assert file_system_of(str(tmp_path / "nas" / "Lora"), mounts) == "nfs4"
    result = plan([str(tmp_path / "nas"), str(tmp_path / "local"), str(tmp_path / "gone")], mounts)
    assert result.watched == [str(tmp_path / "local")]
    assert "nfs4" in result.timer_only[str(tmp_path / "nas")] and str(tmp_path / "gone") in result.timer_only


def test_a_new_model_file_is_seen_after_the_debounce_and_a_partial_download_is_not(tmp_path):
    (tmp_path / "sub").mkdir()  # watched from the start (a folder made later is a change of its own)
    with watching(tmp_path) as collector:
        (tmp_path / "hero.safetensors.part").write_bytes(b"x" * 100)
        assert not collector.event.wait(3)
        model_factory.write_lora(tmp_path / "sub" / "hero.safetensors")
        assert wait_until(collector.event)
        assert any(p.endswith("hero.safetensors") for p in collector.calls[0])
        collector.event.clear()
        (tmp_path / "sub" / "hero.safetensors").unlink()
        assert wait_until(collector.event)
    assert not any(p.endswith(".part") for call in collector.calls for p in call)


def test_a_folder_of_models_moved_in_or_out_is_seen(tmp_path):
    """`mv pack models/Lora/`: the pack's files were written before any watch of it (no event of their own), and
    moved out again they get none either: the folder's own event asks for the re-scan."""
    watched, outside = tmp_path / "Lora", tmp_path / "outside"
    watched.mkdir()
    for name in ("a", "b"):
        model_factory.write_lora(outside / "pack" / f"{name}.safetensors")
    with watching(watched) as collector:
        (outside / "pack").rename(watched / "pack")
        assert wait_until(collector.event)
        assert str(watched / "pack") in collector.calls[-1]
        collector.event.clear()
        (watched / "pack").rename(outside / "pack")
        assert wait_until(collector.event)
        assert str(watched / "pack") in collector.calls[-1]


def test_a_watcher_that_cannot_watch_says_so_and_stops(tmp_path, monkeypatch, caplog):
    import watchfiles

    def exhausted(*args, **kwargs):
        raise OSError("OS file watch limit reached")
        yield  # a generator, as watchfiles.watch is

    monkeypatch.setattr(watchfiles, "watch", exhausted)
    collector = Collector()
    watcher = FolderWatcher([str(tmp_path)], collector)
    with caplog.at_level("WARNING", logger=watcher_module.__name__):
        watcher.start()
        watcher.stop()
    assert watcher.failure == "OS file watch limit reached" and collector.calls == []
    assert sum("re-scanned on the timer only" in r.message for r in caplog.records) == 1


def test_a_file_still_being_written_is_acted_on_once_the_folder_is_quiet(tmp_path):
    with watching(tmp_path) as collector:
        with open(tmp_path / "big.safetensors", "wb") as f:  # a copy in progress: a write every 0.3 s for 3 s
            for _ in range(10):
                f.write(b"x" * 1024)
                f.flush()
                time.sleep(0.3)
                assert not collector.event.is_set()  # never while the writes go on
        assert wait_until(collector.event)
        # the writes made while the file settled come as a batch of their own: not a second change
        collector.event.clear()
        model_factory.write_lora(tmp_path / "later.safetensors")
        assert wait_until(collector.event)
    assert collector.calls == [{str(tmp_path / "big.safetensors")}, {str(tmp_path / "later.safetensors")}]


def test_a_chmod_of_the_file_just_acted_on_is_a_change(tmp_path):
    """Its size and mtime stay: an unreadable file made readable must still be scanned again."""
    with watching(tmp_path) as collector:
        hero = model_factory.write_lora(tmp_path / "hero.safetensors")
        assert wait_until(collector.event)
        collector.event.clear()
        hero.chmod(0o600)
        assert wait_until(collector.event)
    assert collector.calls == [{str(hero)}, {str(hero)}]


def test_without_the_watchfiles_package_the_timer_carries_on(tmp_path, monkeypatch, caplog):
    import sys

    monkeypatch.setitem(sys.modules, "watchfiles", None)  # `import watchfiles` fails as when it is not installed
    watcher = FolderWatcher([str(tmp_path)], Collector())
    with caplog.at_level("WARNING", logger=watcher_module.__name__):
        watcher.start()
        watcher.stop()
    assert watcher.failure == "the watchfiles package is not installed"
    assert sum("re-scanned on the timer only" in r.message for r in caplog.records) == 1
