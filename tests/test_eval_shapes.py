"""The shapes world: seeded scenes, true captions, held-out pairs, and the exact scorer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from rpg.eval.prompts import (
    load_prompt_set,
    objects_in_text,
    shapes_halves_set,
    shapes_heldout_set,
    shapes_single_set,
)
from rpg.eval.shapes import (
    COLOURS,
    HELD_OUT_PAIRS,
    SHAPES,
    WORDS,
    Scene,
    ShapeObject,
    caption,
    crop_scene,
    has_held_out_pair,
    render,
    sample_scene,
    sample_training_example,
)
from rpg.eval.shapes_score import match_objects, read_image


def test_the_same_seed_gives_the_same_scenes_and_captions() -> None:
    a = [sample_training_example(random.Random(3)) for _ in range(2)]
    b = [sample_training_example(random.Random(3)) for _ in range(2)]
    assert a == b
    assert render(a[0][0]).tobytes() == render(b[0][0]).tobytes()
    assert sample_training_example(random.Random(4)) != a[0]


def test_scenes_have_one_to_four_distinct_objects_apart_on_a_plain_background() -> None:
    rng = random.Random(0)
    counts = set()
    for _ in range(200):
        scene = sample_scene(rng)
        counts.add(len(scene.objects))
        names = [o.name for o in scene.objects]
        assert len(set(names)) == len(names)
        assert all(o.colour != scene.background for o in scene.objects)
        boxes = [o.box() for o in scene.objects]
        for i, p in enumerate(boxes):
            assert p[0] >= 0 and p[2] <= 64 and p[1] >= 0 and p[3] <= 64
            for q in boxes[i + 1 :]:
                assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1]
    assert counts == {1, 2, 3, 4}


def test_captions_name_every_object_and_say_true_relations() -> None:
    rng = random.Random(1)
    templates = set()
    for _ in range(400):
        scene, text = sample_training_example(rng)
        assert sorted(objects_in_text(text)) == sorted(o.name for o in scene.objects)
        assert set(text.replace(",", " ").split()) <= set(WORDS)
        if scene.background != "white":
            assert text.endswith(f"on a {scene.background} background")
        if " to the left of " in text and len(scene.objects) == 2:
            left, right = objects_in_text(text)
            by_name = {o.name: o for o in scene.objects}
            assert by_name[left].x < by_name[right].x
        if " above " in text and len(scene.objects) == 2:
            top, bottom = objects_in_text(text)
            by_name = {o.name: o for o in scene.objects}
            assert by_name[top].y < by_name[bottom].y
        for key in (
            "to the left of",
            "to the right of",
            "above",
            "below",
            "next to",
            "from left to right",
            "from top to bottom",
            " and ",
            "background",
        ):
            if key in text:
                templates.add(key)
    assert len(templates) == 9, templates


def test_partial_captions_name_some_of_the_objects_and_only_true_relations() -> None:
    """``partial``: a share of the scenes with several objects gets a caption of a subset."""
    rng = random.Random(5)
    several = partial = 0
    for _ in range(400):
        scene, text = sample_training_example(rng, partial=0.5)
        named, names = objects_in_text(text), [o.name for o in scene.objects]
        assert named and len(set(named)) == len(named) and set(named) <= set(names)
        several += len(names) > 1
        partial += len(named) < len(names)
        by_name = {o.name: o for o in scene.objects}
        if len(named) == 2 and " to the left of " in text:
            assert by_name[named[0]].x < by_name[named[1]].x
        if len(named) == 2 and " above " in text:
            assert by_name[named[0]].y < by_name[named[1]].y
        if text.startswith("from left to right"):
            assert [by_name[n].x for n in named] == sorted(by_name[n].x for n in named)
    assert 0.35 * several < partial < 0.65 * several
    # off by default: the existing training streams (and the shipped model's recipe) are unchanged
    assert [sample_training_example(random.Random(i)) for i in range(20)] == [
        sample_training_example(random.Random(i), partial=0.0) for i in range(20)
    ]


def test_held_out_pairs_never_share_a_training_caption() -> None:
    assert len(HELD_OUT_PAIRS) >= 20
    rng = random.Random(2)
    for _ in range(400):
        scene, text = sample_training_example(rng)
        assert not has_held_out_pair(scene.objects)
        names = objects_in_text(text)
        assert not any(frozenset((a, b)) in HELD_OUT_PAIRS for a in names for b in names)


def test_the_heldout_prompt_set_uses_held_out_pairs_and_exact_plans() -> None:
    items = shapes_heldout_set()
    assert {len(i.objects) for i in items} == {2, 3, 4}
    for item in items:
        assert item.plan is not None and len(item.plan.regions) == len(item.objects)
        assert sorted(objects_in_text(item.prompt)) == sorted(item.objects)
        assert has_held_out_pair(
            [
                ShapeObject(colour=n.split()[0], shape=n.split()[1], size="small", x=0.5, y=0.5)
                for n in item.objects
            ]  # type: ignore[arg-type]
        )
        # the exact plan puts every object in its own region, in the prompt's reading order
        assert [r.prompt.split(" ", 1)[1] for r in item.plan.regions] == list(item.objects)
    assert len(shapes_single_set()) == len(COLOURS) * len(SHAPES)


def test_the_halves_set_puts_every_object_once_on_each_side_with_no_base_prompt() -> None:
    items = load_prompt_set("shapes-halves")
    assert items == shapes_halves_set() and len(items) == len(COLOURS) * len(SHAPES)
    every = {f"{c} {s}" for c in COLOURS for s in SHAPES}
    assert {i.objects[0] for i in items} == every == {i.objects[1] for i in items}
    for item in items:
        (lc, ls), (rc, rs) = (name.split() for name in item.objects)
        assert lc != rc and ls != rs
        assert objects_in_text(item.prompt) == item.objects
        assert item.plan is not None and item.plan.base_prompt is None
        assert item.object_regions() == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]


def test_the_scorer_reads_back_the_generators_own_images() -> None:
    """At least 99% of objects: right colour, shape, size and position (within 2 px)."""
    rng = random.Random(7)
    total = right = 0
    for _ in range(150):
        scene = sample_scene(rng)
        reading = read_image(render(scene))
        assert reading.background == scene.background
        for obj in scene.objects:
            total += 1
            right += any(
                d.name == obj.name
                and d.size == obj.size
                and abs(d.x - obj.x) <= 2 / 64
                and abs(d.y - obj.y) <= 2 / 64
                for d in reading.objects
            )
    assert right / total >= 0.99, (right, total)


def test_the_scorer_reads_an_upscaled_image_and_ignores_specks() -> None:
    scene = Scene(objects=(ShapeObject(shape="star", colour="blue", size="large", x=0.3, y=0.6),))
    image = render(scene).resize((256, 256), Image.Resampling.NEAREST)
    image.putpixel((250, 5), (220, 30, 30))  # a one-pixel speck of red
    reading = read_image(image)
    assert [(d.name, d.size) for d in reading.objects] == [("blue star", "large")]


def test_match_objects_checks_binding_and_placement() -> None:
    scene = Scene(
        objects=(
            ShapeObject(shape="circle", colour="red", size="large", x=0.25, y=0.5),
            ShapeObject(shape="square", colour="blue", size="large", x=0.75, y=0.5),
        )
    )
    reading = read_image(render(scene))
    left, right = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
    checks = match_objects(reading, ["red circle", "blue square"], [left, right])
    assert [(c.found, c.placed) for c in checks] == [(True, True), (True, True)]
    swapped = match_objects(reading, ["red circle", "blue square"], [right, left])
    assert [(c.found, c.placed) for c in swapped] == [(True, False), (True, False)]
    wrong = match_objects(reading, ["red square"], None)
    assert not wrong[0].found and not wrong[0].placed
    with pytest.raises(ValueError, match="2 expected objects but 1 regions"):
        match_objects(reading, ["red circle", "blue square"], [left])


def test_caption_templates_for_one_object() -> None:
    scene = Scene(objects=(ShapeObject(shape="star", colour="orange", size="small", x=0.2, y=0.5),))
    texts = {caption(scene, random.Random(i)) for i in range(60)}
    assert "an orange star" in texts
    assert any(t.startswith("an orange star on the left") for t in texts)


def test_word_tokenizer_has_one_token_per_world_word(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from rpg.eval.train_shapes import write_word_tokenizer

    write_word_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    for word in WORDS:
        assert tok.tokenize(word) == [word + "</w>"]
    assert len(tok.tokenize("a zebra")) > 2  # unknown words still tokenize, letter by letter


def test_training_script_one_step_smoke(tmp_path: Path) -> None:
    """One VAE step and one UNet step write a loadable pipeline folder and a loss picture."""
    from diffusers import StableDiffusionPipeline

    from rpg.eval.train_shapes import main

    out = main(
        [
            "--out",
            str(tmp_path / "m"),
            "--steps",
            "1",
            "--vae-steps",
            "1",
            "--batch",
            "2",
            "--vae-batch",
            "2",
            "--log-every",
            "1",
            "--threads",
            "1",
            "--text-lr",
            "1e-3",
        ]
    )
    assert (tmp_path / "m-loss.png").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(out)
    import torch

    from rpg.eval.shapes_components import build_components

    fresh = build_components(tmp_path / "tok", seed=0, unet_channels=[32, 64, 64])["text_encoder"]
    saved = dict(pipe.text_encoder.named_parameters())
    assert not all(torch.equal(p, saved[n]) for n, p in fresh.named_parameters())  # --text-lr
    assert pipe.vae_scale_factor == 4
    # by default the 16×16 level is convolutions only; 8×8 and 4×4 cross-attend
    assert pipe.unet.config.down_block_types == [
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
    ]
    assert pipe.unet.config.up_block_types[-1] == "UpBlock2D"
    assert not pipe.scheduler.config.rescale_betas_zero_snr  # the SD schedule by default
    assert pipe.tokenizer.tokenize("a red circle") == ["a</w>", "red</w>", "circle</w>"]
    image = pipe("a red circle", num_inference_steps=1, output_type="pil").images[0]
    assert image.size == (64, 64)


def test_min_snr_weights_cap_the_low_noise_steps() -> None:
    import torch

    from rpg.eval.shapes_training import snr_weight

    snr = torch.tensor([0.0, 1.0, 4.0, 100.0])
    v = snr_weight(snr, 5.0, velocity=True)
    # in image terms min(SNR, 5); a v-loss already weighs a step by SNR + 1
    assert torch.allclose(v, torch.tensor([1.0, 1 / 2, 4 / 5, 5 / 101]))  # zero SNR: weight 1
    eps = snr_weight(snr[1:], 5.0, velocity=False)
    assert torch.allclose(eps, torch.tensor([1.0, 1.0, 0.05]))
    assert torch.equal(snr_weight(snr, 0.0, velocity=True), torch.ones(4))


def test_offset_noise_makes_the_channel_means_of_the_noise_uninformative() -> None:
    """``--offset-noise``: a per-image, per-channel constant on top of plain Gaussian noise."""
    import torch

    from rpg.eval.shapes_training import training_noise

    shape = torch.Size((256, 4, 16, 16))
    plain = training_noise(shape, torch.Generator().manual_seed(3), 0.0)
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(3)))
    offset = training_noise(shape, torch.Generator().manual_seed(3), 0.5)
    # over 16×16 positions plain noise has channel means of std 1/16; the offset adds 0.5
    assert float(plain.mean(dim=(2, 3)).std()) < 0.08
    assert 0.4 < float(offset.mean(dim=(2, 3)).std()) < 0.6
    # within a channel the offset is one constant: what varies from place to place is unchanged
    assert torch.allclose(offset - offset.mean(dim=(2, 3), keepdim=True),
                          plain - plain.mean(dim=(2, 3), keepdim=True), atol=1e-5)  # fmt: skip


def test_zero_terminal_snr_refuses_epsilon(capsys) -> None:
    from rpg.eval.train_shapes import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--prediction-type", "epsilon", "--zero-terminal-snr"])
    assert "needs --prediction-type v_prediction" in capsys.readouterr().err
    args = parse_args(["--out", "x", "--prediction-type", "epsilon"])
    assert not args.zero_terminal_snr


def test_partial_captions_must_be_a_share(capsys) -> None:
    from rpg.eval.train_shapes import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--partial-captions", "1.5"])
    assert "--partial-captions is a share of scenes, 0 to 1; got 1.5" in capsys.readouterr().err
    assert parse_args(["--out", "x", "--partial-captions", "0.3"]).partial_captions == 0.3


def test_object_counts_weigh_how_many_objects_a_training_scene_has(capsys) -> None:
    from rpg.eval.train_shapes import parse_args

    counts = [
        len(sample_training_example(rng, count_weights=(0, 1, 0, 3))[0].objects)
        for rng in [random.Random(7)]
        for _ in range(200)
    ]
    assert set(counts) == {2, 4} and 110 < counts.count(4) < 190
    default = parse_args(["--out", "x"]).object_counts
    assert [sample_training_example(random.Random(i)) for i in range(20)] == [
        sample_training_example(random.Random(i), count_weights=default) for i in range(20)
    ]
    assert parse_args(["--out", "x", "--object-counts", "1,2,3,0"]).object_counts == (1, 2, 3, 0)
    for bad in ("1,2,3", "0,0,0,0", "1,-1,1,1", "a,b,c,d"):
        with pytest.raises(SystemExit):
            parse_args(["--out", "x", "--object-counts", bad])
        assert "four weights for 1, 2, 3 and 4 objects" in capsys.readouterr().err


def test_loss_picture_from_a_training_log(tmp_path: Path) -> None:
    from rpg.eval.train_shapes import curves_from_log, main

    log = (
        "[09:00:00] vae  step 10/20 loss 0.5000 (1.0 s/step)\n"
        "[09:00:10] vae  step 20/20 loss 0.2500 (1.0 s/step)\n"
        "[09:01:00] unet step 10/30 loss 0.9000 lr 1e-3 (4.0 s/step, 1 min left)\n"
    )
    assert curves_from_log(log) == {"vae loss": [(10, 0.5), (20, 0.25)], "unet loss": [(10, 0.9)]}
    (tmp_path / "train.log").write_text(log)
    picture = main(["--out", str(tmp_path / "m"), "--plot-log", str(tmp_path / "train.log")])
    assert picture == tmp_path / "m-loss.png" and Image.open(picture).size == (720, 360)


def test_edge_weighted_reconstruction_loss_counts_shape_outlines_more() -> None:
    """An error confined to a shape's outline costs more with an edge weight than without; an
    error on flat colour costs less (the loss is normalised by the mean weight)."""
    import numpy as np
    import torch

    from rpg.eval.shapes import Scene, ShapeObject, render
    from rpg.eval.shapes_training import edge_pixels, reconstruction_loss

    scene = Scene(objects=(ShapeObject(shape="star", colour="red", size="large", x=0.5, y=0.5),))
    pixels = torch.from_numpy(np.asarray(render(scene), np.float32)).permute(2, 0, 1)[None]
    pixels = pixels / 127.5 - 1
    edges = edge_pixels(pixels)
    assert 0 < edges.mean().item() < 0.2  # the outline only
    assert edges[0, 0, 0, 0] == 0 and edges[0, 0, 32, 32] == 0  # background, star centre
    on_edges = pixels + 0.5 * edges
    off_edges = pixels + 0.5 * (1 - edges) * (torch.rand_like(edges) < 0.05)
    plain = [reconstruction_loss(x, pixels, 0.0).item() for x in (on_edges, off_edges)]
    weighted = [reconstruction_loss(x, pixels, 8.0).item() for x in (on_edges, off_edges)]
    assert weighted[0] > plain[0] and weighted[1] < plain[1]
    assert reconstruction_loss(pixels, pixels, 8.0).item() == 0


def test_training_from_an_encoded_pool(tmp_path: Path, capsys) -> None:
    """``--latent-pool``: scenes are encoded once, and the UNet trains on draws from them."""
    from diffusers import StableDiffusionPipeline

    from rpg.eval.train_shapes import main

    out = main(
        ["--out", str(tmp_path / "m"), "--steps", "2", "--vae-steps", "1", "--batch", "2",
         "--vae-batch", "2", "--log-every", "1", "--threads", "1", "--latent-pool", "5",
         "--vae-channels", "8,16,16", "--latent-channels", "4", "--unet-attention", "0,1",
         "--unet-channels", "16,32,32", "--unet-heads", "1", "--zero-terminal-snr",
         "--offset-noise", "0.1", "--partial-captions", "0.5", "--object-counts", "0,0,0,1"]
    )  # fmt: skip
    log = capsys.readouterr().out
    assert "pool 5/5 scenes encoded" in log and "unet step 2/2" in log
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.unet.config.in_channels == 4 and pipe.vae.config.norm_num_groups == 2
    unet = pipe.unet.config
    assert unet.down_block_types[0] == "CrossAttnDownBlock2D" and unet.attention_head_dim == 1
    assert unet.up_block_types == ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    # --zero-terminal-snr: trained to a pure-noise last step, and sampled from it
    assert pipe.scheduler.config.rescale_betas_zero_snr
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    # without --text-lr the text encoder is the seeded initial one (trained, it collapses)
    import torch

    from rpg.eval.shapes_components import build_components

    fresh = build_components(tmp_path / "tok", seed=0, unet_channels=[32, 64, 64])["text_encoder"]
    saved = dict(pipe.text_encoder.named_parameters())
    assert all(torch.equal(p, saved[n]) for n, p in fresh.named_parameters())
    # --unet-from: a second run starts from the first one's UNet (no steps: saved unchanged)
    again = main(
        ["--out", str(tmp_path / "again"), "--steps", "0", "--vae-steps", "0", "--threads", "1",
         "--vae-from", str(out / "vae"), "--unet-from", str(out), "--latent-channels", "4",
         "--vae-channels", "8,16,16"]
    )  # fmt: skip
    first, second = pipe.unet.state_dict(), StableDiffusionPipeline.from_pretrained(again).unet
    assert all(torch.equal(first[n], p) for n, p in second.state_dict().items())


def test_data_seed_changes_the_data_but_not_the_initial_weights(tmp_path: Path) -> None:
    """``--data-seed``: a continued run sees new scenes; ``--seed`` alone still fixes both."""
    import torch
    from diffusers import StableDiffusionPipeline

    from rpg.eval.train_shapes import main

    def run(name: str, steps: int, *extra: str) -> dict[str, torch.Tensor]:
        out = main(
            ["--out", str(tmp_path / name), "--steps", str(steps), "--vae-steps", str(steps),
             "--batch", "2", "--vae-batch", "2", "--threads", "1", "--vae-channels", "8,16,16",
             "--latent-channels", "4", "--unet-channels", "16,32,32", "--unet-heads", "1",
             *extra]
        )  # fmt: skip
        return StableDiffusionPipeline.from_pretrained(out).unet.state_dict()

    def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(a[n], p) for n, p in b.items())

    plain = run("plain", 1)
    saved = json.loads((tmp_path / "plain" / "training.json").read_text())
    assert saved["unet_attention"] == "1,2"  # the default, recorded
    assert equal(plain, run("same", 1, "--data-seed", "0"))
    assert not equal(plain, run("other", 1, "--data-seed", "5"))
    assert equal(run("init", 0), run("init-other", 0, "--data-seed", "5"))


def test_unet_from_grows_new_cross_attention_that_starts_as_a_no_op(tmp_path: Path) -> None:
    """``--unet-from`` with more ``--unet-attention`` levels: same outputs, new blocks to train."""
    import torch
    from diffusers import StableDiffusionPipeline

    from rpg.eval.shapes_components import build_components
    from rpg.eval.train_shapes import main

    small = {"unet_channels": [16, 32, 32], "unet_heads": 1, "latent_channels": 4}
    trained = build_components(tmp_path / "tok", seed=3, unet_attention=(1, 2), **small)["unet"]
    with torch.no_grad():  # not the seeded initialisation that the grown UNet also starts from
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trained.save_pretrained(tmp_path / "trained")
    args = ["--steps", "0", "--vae-steps", "0", "--threads", "1", "--latent-channels", "4",
            "--vae-channels", "8,16,16", "--unet-channels", "16,32,32",
            "--unet-heads", "1"]  # fmt: skip
    out = main(["--out", str(tmp_path / "grown"), "--unet-from", str(tmp_path / "trained"),
                "--unet-attention", "0,1,2", *args])  # fmt: skip
    grown = StableDiffusionPipeline.from_pretrained(out).unet
    assert json.loads((out / "training.json").read_text())["unet_attention"] == "0,1,2"
    assert grown.config.down_block_types[0] == "CrossAttnDownBlock2D"
    assert grown.config.up_block_types[-1] == "CrossAttnUpBlock2D"
    new = grown.down_blocks[0].attentions[0]
    assert new.proj_out.weight.abs().max() == 0 and new.proj_in.weight.abs().max() > 0
    latents, text = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 64)
    with torch.no_grad():
        assert torch.equal(trained(latents, 500, text).sample, grown(latents, 500, text).sample)
    # a UNet can grow attention but not lose it: the grown one cannot go back to levels 1,2
    with pytest.raises(SystemExit, match=r"levels \[0, 1, 2\].*not lose it.*--unet-attention"):
        main(["--out", str(tmp_path / "shrunk"), "--unet-from", str(out),
              "--unet-attention", "1,2", *args])  # fmt: skip


def test_a_crop_shows_the_whole_objects_inside_in_its_own_fractions() -> None:
    left = ShapeObject(shape="circle", colour="red", size="small", x=0.25, y=0.5)
    right = ShapeObject(shape="star", colour="blue", size="large", x=0.75, y=0.5)
    scene = Scene(background="green", objects=(left, right))
    seen = crop_scene(scene, (0, 0, 32, 64))  # the left half
    assert seen is not None and seen.background == "green"
    assert [o.name for o in seen.objects] == ["red circle"]
    assert (seen.objects[0].x, seen.objects[0].y) == pytest.approx((0.5, 0.5))
    assert crop_scene(scene, (16, 0, 48, 64)) is None  # cuts both objects
    assert crop_scene(scene, (0, 0, 16, 16)) is None  # shows nothing
    # a crop's caption is a picture of its own: position words are the crop's
    assert caption(crop_scene(scene, (32, 0, 64, 64)), random.Random(0)).count("blue star") == 1


def test_cropped_batches_cut_the_pool_latents_where_their_scene_says(monkeypatch) -> None:
    import rpg.eval.shapes_training as training
    from rpg.eval.shapes_training import CROP_SIZES, cropped_batch

    rng = random.Random(3)
    scenes = [sample_scene(rng, avoid_held_out=True) for _ in range(40)]
    # every latent says which scene and position it is: channel 0 = x, 1 = y, 2 = scene
    grid = torch.arange(16.0)
    latents = torch.stack(
        [
            torch.stack(
                [grid.expand(16, 16), grid[:, None].expand(16, 16), torch.full((16, 16), float(i))]
            )
            for i in range(40)
        ]
    )
    sizes = set()
    for _ in range(6):
        batch, captions, seen = cropped_batch(scenes, latents, rng, 8, partial=0.0, drop=0.0)
        h, w = batch.shape[-2:]
        sizes.add((w, h))
        assert (w, h) in CROP_SIZES and batch.shape[:2] == (8, 3) and len(captions) == 8
        for crop, text, shown in zip(batch, captions, seen, strict=True):
            i, lx, ly = int(crop[2, 0, 0]), int(crop[0, 0, 0]), int(crop[1, 0, 0])
            box = (lx * 4, ly * 4, (lx + w) * 4, (ly + h) * 4)
            assert crop_scene(scenes[i], box) == shown
            assert all(o.name in text for o in shown.objects)
    assert len(sizes) > 1
    # a large object is wider than a quarter of the canvas: no such crop can hold it
    monkeypatch.setattr(training, "CROP_SIZES", ((4, 16),))
    big = [Scene(objects=(ShapeObject(shape="star", colour="red", size="large", x=0.5, y=0.5),))]
    with pytest.raises(ValueError, match="use a larger --latent-pool"):
        cropped_batch(big, latents[:1], random.Random(0), 2, partial=0.0)


def test_crops_must_be_a_share_and_need_a_pool(capsys) -> None:
    from rpg.eval.train_shapes import parse_args

    assert parse_args(["--out", "x", "--crops", "0.5", "--latent-pool", "10"]).crops == 0.5
    for bad, message in (
        (["--crops", "2"], "--crops is a share of steps"),
        (["--crops", "0.5"], "give --latent-pool N"),
    ):
        with pytest.raises(SystemExit):
            parse_args(["--out", "x", *bad])
        assert message in capsys.readouterr().err
