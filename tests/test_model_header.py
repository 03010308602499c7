import json
import struct

import pytest

import model_factory
from modelsync.shared.scan.classification import classify
from modelsync.shared.scan.model_header import HeaderError, read_header


def raw(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x01\x02", "truncated"),
        (struct.pack("<Q", 999) + b"{}", "exceeds file size"),
        (struct.pack("<Q", 4) + b"{no}", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_bad_safetensors_headers_raise_a_reason(tmp_path, data, reason):
    with pytest.raises(HeaderError, match=reason):
        read_header(raw(tmp_path, "x.safetensors", data))


def test_non_dict_metadata_is_reported_and_the_rest_used(tmp_path):
    header = json.dumps({"__metadata__": "oops", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": {"dtype": "F16", "shape": [4, 768], "data_offsets": [0, 6144]}}).encode()
    info = read_header(raw(tmp_path, "x.safetensors", struct.pack("<Q", len(header)) + header + bytes(6144)))
    assert "not an object" in info.problem and info.type == "lora" and info.base == "sd1" and info.embedded == {}


def test_json_strings_in_metadata_are_decoded(tmp_path):
    path = model_factory.write_lora(tmp_path / "x.safetensors", metadata={"ss_tag_frequency": '{"1_hero": {"cape": 3}}', "ss_note": "{not json", "ss_v2": "False"})
    info = read_header(str(path))
    assert info.embedded["ss_tag_frequency"] == {"1_hero": {"cape": 3}}
    assert info.embedded["ss_note"] == "{not json" and info.embedded["ss_v2"] == "False"


def test_pickles_are_never_opened(tmp_path):
    info = read_header(raw(tmp_path, "x.ckpt", b"\x80\x04garbage"))
    assert info.format == "pickle" and info.type is None and info.embedded == {}


def test_gguf_metadata_and_classification(tmp_path):
    info = read_header(str(model_factory.write_gguf(tmp_path / "flux.gguf", arch="flux")))
    assert info.format == "gguf" and info.embedded["general.name"] == "tiny"
    assert (info.type, info.base) == ("unet", "flux1")


def test_garbage_gguf_raises(tmp_path):
    with pytest.raises(HeaderError):
        read_header(raw(tmp_path, "x.gguf", b"GGUF" + b"\xff" * 64))


CASES = [
    (model_factory.write_checkpoint, {"base": "sd1"}, ("checkpoint", "sd1")),
    (model_factory.write_checkpoint, {"base": "sd2"}, ("checkpoint", "sd2")),
    (model_factory.write_checkpoint, {"base": "sdxl"}, ("checkpoint", "sdxl")),
    (model_factory.write_checkpoint, {"base": "sd3"}, ("checkpoint", "sd3")),
    (model_factory.write_checkpoint, {"base": "flux1"}, ("checkpoint", "flux1")),
    (model_factory.write_unet, {"base": "flux1"}, ("unet", "flux1")),
    (model_factory.write_unet, {"base": "sdxl"}, ("unet", "sdxl")),
    (model_factory.write_lora, {"base": "sd1"}, ("lora", "sd1")),
    (model_factory.write_lora, {"base": "sd2"}, ("lora", "sd2")),
    (model_factory.write_lora, {"base": "sdxl"}, ("lora", "sdxl")),
    (model_factory.write_lora, {"base": "flux1"}, ("lora", "flux1")),
    (model_factory.write_lora, {"base": "sd1", "variant": "locon"}, ("locon", "sd1")),
    (model_factory.write_lora, {"base": "sdxl", "variant": "loha"}, ("loha", "sdxl")),
    (model_factory.write_lora, {"base": "sd1", "variant": "lokr"}, ("lokr", None)),
    (model_factory.write_lora, {"base": "sd1", "variant": "dora"}, ("dora", "sd1")),
    (model_factory.write_vae, {}, ("vae", None)),
    (model_factory.write_embedding, {"base": "sd1"}, ("embedding", "sd1")),
    (model_factory.write_embedding, {"base": "sd2"}, ("embedding", "sd2")),
    (model_factory.write_embedding, {"base": "sdxl"}, ("embedding", None)),
    (model_factory.write_controlnet, {"base": "sd1"}, ("controlnet", "sd1")),
    (model_factory.write_upscaler, {}, ("upscaler", None)),
    (model_factory.write_text_encoder, {"kind": "t5"}, ("text_encoder", None)),
    (model_factory.write_text_encoder, {"kind": "clip"}, ("text_encoder", None)),
]


@pytest.mark.parametrize("writer, kwargs, expected", CASES)
def test_content_classification(tmp_path, writer, kwargs, expected):
    info = read_header(str(writer(tmp_path / "m.safetensors", **kwargs)))
    assert (info.type, info.base) == expected


def test_metadata_hints_fill_an_unknown_base_only(tmp_path):
    lokr = model_factory.write_lora(tmp_path / "a.safetensors", base="sd1", variant="lokr", metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    assert read_header(str(lokr)).base == "sdxl"
    sd1 = model_factory.write_lora(tmp_path / "b.safetensors", base="sd1", metadata={"modelspec.architecture": "flux-1-dev/lora"})
    assert read_header(str(sd1)).base == "sd1"  # the tensors say SD1; they win


def test_unknown_content_stays_unknown():
    assert classify({"some.random.weight": [3, 3]}, {}) == (None, None)


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], list[int]]], data: bytes) -> bytes:
    header = json.dumps({name: {"dtype": d, "shape": s, "data_offsets": o} for name, (d, s, o) in tensors.items()}).encode()
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize("cut", [3000, 1, -1])
def test_a_safetensors_file_cut_anywhere_in_its_tensor_data_is_truncated(tmp_path, cut):
    """What an interrupted in-place download leaves: the header intact, the data cut short."""
    whole = model_factory.write_lora(tmp_path / "whole.safetensors").read_bytes()
    header_end = 8 + struct.unpack("<Q", whole[:8])[0]
    data = whole[: cut if cut > header_end else header_end + 1] if cut != -1 else whole[:-1]
    with pytest.raises(HeaderError, match="truncated"):
        read_header(raw(tmp_path, "cut.safetensors", data))


@pytest.mark.parametrize(
    "tensors, data, reason",
    [
        ({"a": ("F16", [2], [0, 4]), "b": ("F16", [2], [2, 6])}, bytes(6), "overlaps"),
        ({"a": ("F16", [2], [0, 4]), "b": ("F16", [2], [6, 10])}, bytes(10), "gap of 2 bytes"),
        ({"a": ("F32", [2], [0, 4])}, bytes(4), "need 8"),
        ({"a": ("F16", [2], [0, 4])}, bytes(9), "5 bytes after the last tensor"),
        ({"a": ("F16", [2], "0-4")}, bytes(4), "no valid data_offsets"),
        ({"a": ("F16", [2], [4, 0])}, bytes(4), "no valid data_offsets"),
    ],
)
def test_tensor_layouts_the_format_forbids_are_refused(tmp_path, tensors, data, reason):
    with pytest.raises(HeaderError, match=reason):
        read_header(raw(tmp_path, "x.safetensors", safetensors_bytes(tensors, data)))


def test_packed_and_unknown_dtypes_and_empty_tensors_read(tmp_path):
    tensors = {"e": ("F16", [0, 4], [0, 0]), "f4": ("F4", [3], [0, 2]), "new": ("X9", [5], [2, 7])}
    info = read_header(raw(tmp_path, "x.safetensors", safetensors_bytes(tensors, bytes(7))))
    assert info.tensor_count == 3


def test_a_gguf_file_cut_in_its_tensor_data_is_truncated(tmp_path):
    whole = model_factory.write_gguf(tmp_path / "whole.gguf").read_bytes()
    read_header(raw(tmp_path, "ok.gguf", whole))
    with pytest.raises(HeaderError):
        read_header(raw(tmp_path, "cut.gguf", whole[:-100]))


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "empty file"), (b"hello world", "not a PyTorch file"), (b"PK\x03\x04" + bytes(100), "truncated or damaged")],
)
def test_pytorch_files_that_cannot_be_archives_or_pickles_are_refused_without_unpickling(tmp_path, data, reason):
    with pytest.raises(HeaderError, match=reason):
        read_header(raw(tmp_path, "x.ckpt", data))


def test_a_pytorch_zip_archive_cut_short_is_truncated_and_a_whole_one_reads(tmp_path):
    import zipfile

    path = tmp_path / "whole.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", bytes(5000))
    assert read_header(str(path)).format == "pickle"
    with pytest.raises(HeaderError, match="truncated or damaged"):
        read_header(raw(tmp_path, "cut.ckpt", path.read_bytes()[:3000]))
    assert read_header(raw(tmp_path, "legacy.pt", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")).format == "pickle"
