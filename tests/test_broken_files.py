"""A file whose bytes are not a whole model (an interrupted in-place download, garbage) is a problem of its node: never
a model, never matched by a job check, listed with its reason."""
import model_factory
from support_jobs import JobNode
from support_server import central_server  # noqa: F401  (fixture)


def test_a_truncated_lora_is_a_problem_of_the_node_not_a_model(tmp_path, central_server):
    node = JobNode(tmp_path, "gpu-01", base_url=central_server.base_url)
    whole = node.add("Lora", "hero.safetensors", base="sdxl", metadata={"ss_output_name": "otherLora"})
    cut = node.models / "Lora" / "otherLora.safetensors"
    cut.write_bytes(whole.read_bytes()[:3000])  # the header intact, the tensor data cut off
    answer = node.push()
    assert (answer["added"], answer["unusable"]) == (1, 1)

    models = central_server.get("/api/v1/models").json()
    assert [m["filename"] for m in models["models"]] == ["hero.safetensors"]
    broken = central_server.get("/api/v1/servers/gpu-01/files", params={"state": "broken"}).json()
    assert [f["rel_name"] for f in broken["files"]] == ["otherLora.safetensors"]
    assert "truncated" in broken["files"][0]["reason"] and broken["files"][0]["model_id"] is None
    node_row = next(s for s in central_server.get("/api/v1/servers").json()["servers"] if s["id"] == "gpu-01")
    assert (node_row["file_count"], node_row["broken_count"]) == (1, 1)

    # by its file name the job means the broken file; by the name the whole file carries it means the whole one
    check = central_server.post("/api/v1/servers/gpu-01/dispatch-check",
                                json={"job": {"prompt": "<lora:otherLora.safetensors:1>"}}).json()
    assert check["ok"] is False
    check = central_server.post("/api/v1/servers/gpu-01/dispatch-check", json={"job": {"prompt": "<lora:hero:1>"}}).json()
    assert check["ok"] is True

    cut.write_bytes(whole.read_bytes())  # the download finished: a whole file now
    again = node.push()
    assert again["unusable"] == 0
    assert central_server.get("/api/v1/servers/gpu-01/files", params={"state": "broken"}).json()["total"] == 0
