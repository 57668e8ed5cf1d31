"""Shards: one reader for loose files and ``shard.tar#member`` refs, used wherever vital opens a figure."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_embed import world

from vital.embed import run
from vital.embed.store import load_embeddings
from vital.llm.prompts import ImageError, check_image, image_data_url
from vital.params import EmbedParams
from vital.shards import ShardError, ShardWriter, image_exists, open_image, read_bytes, sample_key, split_ref

torch.set_num_threads(1)


def png(color: tuple[int, int, int], size=(16, 12)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_open_image_reads_loose_files_and_shard_members(tmp_path: Path):
    (tmp_path / "loose.png").write_bytes(png((255, 0, 0)))
    w = ShardWriter(tmp_path / "s" / "shard-00000.tar")
    w.add("a", "png", png((0, 255, 0)), {"pair_id": "a"})
    w.add("b" * 120, "png", png((0, 0, 255)), {"pair_id": "long"})  # past ustar's 100-char names
    assert not (tmp_path / "s" / "shard-00000.tar").exists()  # nothing under the final name until commit
    w.commit()
    with open_image("loose.png", tmp_path) as im:
        assert im.getpixel((0, 0)) == (255, 0, 0)
    with open_image(tmp_path / "s/shard-00000.tar#a.png") as im:
        assert im.getpixel((0, 0)) == (0, 255, 0)
    with open_image(f"s/shard-00000.tar#{'b' * 120}.png", tmp_path) as im:
        assert im.getpixel((0, 0)) == (0, 0, 255)
    # a plain tar reader sees a WebDataset sample: image then json, fixed mtime
    with tarfile.open(tmp_path / "s/shard-00000.tar") as tf:
        assert tf.getnames()[:2] == ["a.png", "a.json"] and tf.getmember("a.png").mtime == 0
        assert json.loads(tf.extractfile("a.json").read()) == {"pair_id": "a"}
    assert image_exists("s/shard-00000.tar#a.png", tmp_path) and not image_exists(
        "s/shard-00000.tar#z.png", tmp_path
    )
    assert not image_exists("s/none.tar#a.png", tmp_path)
    with pytest.raises(ShardError, match="no member 'z.png'"):
        read_bytes("s/shard-00000.tar#z.png", tmp_path)
    with pytest.raises(FileNotFoundError, match="shard not found"):
        open_image("s/none.tar#a.png", tmp_path)
    assert split_ref("x/y.png") == ("x/y.png", None) and split_ref("x/y.tar#k.jpg") == ("x/y.tar", "k.jpg")


def test_sample_key_has_no_dots_and_no_collisions():
    assert sample_key("PMC123_fig1") == "PMC123_fig1"
    a, b = sample_key("PMC1.fig/1"), sample_key("PMC1_fig_1")
    assert "." not in a and "/" not in a and a != b


def test_prompt_images_come_from_shards(tmp_path: Path):
    w = ShardWriter(tmp_path / "s.tar")
    w.add("a", "png", png((1, 2, 3)), {})
    w.commit()
    assert image_data_url(tmp_path / "s.tar#a.png", 64).startswith("data:image/png;base64,")
    check_image(tmp_path / "s.tar#a.png")
    with pytest.raises(ImageError, match="image not found"):
        check_image(tmp_path / "s.tar#b.png")


def test_embed_reads_figures_from_shards_with_the_same_features(tmp_path: Path):
    loose = world(tmp_path / "loose")
    run(EmbedParams(batch_size=4, text_mode="joint"), loose)
    expected = load_embeddings(loose.embeddings)

    sharded = world(tmp_path / "sharded")
    figs = [json.loads(x) for x in sharded.sample.read_text().splitlines()]
    w = ShardWriter(sharded.corpus / "shards" / "shard-00000.tar")
    refs = {}
    for f in figs:
        w.add(f["pair_id"], "png", (sharded.corpus / f["image"]).read_bytes(), {"pair_id": f["pair_id"]})
        (sharded.corpus / f["image"]).unlink()  # only the shard has it now
        refs[f["pair_id"]] = f"shards/shard-00000.tar#{f['pair_id']}.png"
    w.commit()
    sharded.sample.write_text("".join(json.dumps({**f, "image": refs[f["pair_id"]]}) + "\n" for f in figs))
    # generate copies each figure's image into its candidates: embed opens the one a candidate was made on
    cands = [json.loads(x) for x in sharded.candidates.read_text().splitlines()]
    sharded.candidates.write_text(
        "".join(json.dumps({**c, "image": refs[c["pair_id"]]}) + "\n" for c in cands)
    )
    m = run(EmbedParams(batch_size=4, text_mode="joint"), sharded)
    got = load_embeddings(sharded.embeddings)
    assert m["figures"] == 6 and m["dropped"] == 0
    assert np.array_equal(got.image, expected.image) and np.array_equal(got.text, expected.text)


def test_check_image_reads_a_shard_member_as_training_data_does(tmp_path: Path):
    """Training records of a fetched corpus name `<shard>.tar#<member>`: usable, not 'image not found'."""
    from vital.images import check_image

    w = ShardWriter(tmp_path / "figures" / "shard-00000.tar")
    w.add("a", "png", png((0, 255, 0)), {"pair_id": "a"})
    w.add("bad", "png", b"not an image", {"pair_id": "bad"})
    w.commit()
    ref = tmp_path / "corpus" / ".." / "figures" / "shard-00000.tar#a.png"  # as curated records join them
    assert check_image(ref) is None
    assert check_image(tmp_path / "figures/shard-00000.tar#gone.png").startswith("image not found")
    assert check_image(tmp_path / "figures/shard-00000.tar#bad.png").startswith(
        "image file is not a readable"
    )
