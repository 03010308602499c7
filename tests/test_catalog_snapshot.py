"""read_snapshot: several reads on one connection see one state of the catalog while another connection commits."""
from modelsync.shared.catalog import migrate, open_catalog, read_snapshot, write_transaction


def servers(db) -> list[str]:
    return [row[0] for row in db.conn.execute("SELECT id FROM servers ORDER BY id")]


def test_reads_in_a_snapshot_do_not_see_a_commit_made_meanwhile(tmp_path):
    reader = open_catalog(tmp_path / "registry.db")
    migrate(reader)
    writer = open_catalog(tmp_path / "registry.db")
    with write_transaction(writer):
        writer.conn.execute("INSERT INTO servers (id) VALUES ('gpu-01')")

    with read_snapshot(reader):
        first = servers(reader)
        with write_transaction(writer):
            writer.conn.execute("INSERT INTO servers (id) VALUES ('gpu-02')")
        assert servers(reader) == first == ["gpu-01"]
        with read_snapshot(reader):  # nested: the outer snapshot's state
            assert servers(reader) == ["gpu-01"]
    assert not reader.conn.in_transaction
    assert servers(reader) == ["gpu-01", "gpu-02"]
