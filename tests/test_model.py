import json

import pytest
import torch

from helpers import random_pairs, tiny_reward_model
from jrm_engine.backbone import load_backbone
from jrm_engine.data import Candidate, PreferencePair
from jrm_engine.data.collate import PairCollator
from jrm_engine.losses import first_token_loss, joint_loss
from jrm_engine.model import RewardHead, RewardModel, repeat_shared_images
from jrm_engine.sequence import IGNORE_INDEX


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    return tiny_reward_model(tmp_path_factory.mktemp("m")).eval()


def test_layout_labels_start_at_reward_token(model):
    enc = model.layout.encode("make the red circle blue", "correct . the red circle")
    ids, labels = enc.input_ids, enc.lm_labels
    assert ids[enc.reward_pos] == model.token_ids.reward
    assert labels[: enc.reward_pos] == [IGNORE_INDEX] * enc.reward_pos
    explanation = model.layout.text_ids("correct . the red circle")
    # row t predicts token t+1: the reward row predicts the first explanation token, the last row predicts eos
    assert labels[enc.reward_pos:] == explanation + [model.token_ids.eos]
    assert ids[enc.reward_pos + 1:] == explanation
    assert ids.count(model.token_ids.image) == 2 * model.spec.num_tokens
    # The instruction follows both images, right before <reward>
    block = model.layout.image_block()
    assert ids[: enc.reward_pos] == block + block + model.layout.text_ids("make the red circle blue")


def test_encode_many_is_encode_of_each_and_names_a_bad_record(model):
    items = [("make the red circle blue", "correct . the red circle", "r0"), ("remove the square", None, "r1"),
             ("add a circle", "wrong", "r2"), ("make the circle red", " ", "r3")]
    many = model.layout.encode_many(items)
    assert many == [model.layout.encode(i, e, record=r) for i, e, r in items]
    assert many[1].lm_labels == [IGNORE_INDEX] * len(many[1].input_ids)  # no explanation: nothing to predict
    assert many[3].lm_labels[many[3].reward_pos:] == [model.token_ids.eos]  # a blank one: eos at <reward>
    with pytest.raises(ValueError, match=r"^record 'r9': empty instruction"):
        model.layout.encode_many(items + [(" ", "correct", "r9")])


def test_reward_ignores_padding_and_explanation(model):
    pairs = random_pairs(3, model.spec.image_size)
    collate = PairCollator(model.layout, model.spec)
    with torch.no_grad():
        batched = model(**collate(pairs).model_inputs()).rewards
        alone = torch.cat([model(**collate([p]).model_inputs()).rewards for p in pairs])
        no_expl = [PreferencePair(p.id, p.source, p.instruction, Candidate(p.a.image), Candidate(p.b.image),
                                  p.preference) for p in pairs]
        without = model(**collate(no_expl).model_inputs()).rewards
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    # causal attention: the explanation after <reward> never changes the reward
    torch.testing.assert_close(batched, without, atol=1e-5, rtol=0)


def test_shared_source_image_gives_the_unshared_loss_and_gradients(model):
    """A pair's source image is encoded once and scattered into both sequences; against every slot encoding its own
    copy, the joint loss and every gradient (the vision tower's included) are unchanged."""
    batch = PairCollator(model.layout, model.spec)(random_pairs(3, model.spec.image_size, seed=2))
    assert len(batch.image_grid_thw) == 3 * 3 and len(batch.image_index) == 2 * 6  # 3 images a pair, 4 slots
    pixels, grid = repeat_shared_images(batch.pixel_values, batch.image_grid_thw, batch.image_index)
    unshared = dict(batch.model_inputs(), pixel_values=pixels, image_grid_thw=grid, image_index=None)
    results = []
    for inputs in (batch.model_inputs(), unshared):
        model.zero_grad()
        out = model(**inputs)
        loss = joint_loss(out.hidden.flatten(0, 1), model.lm_weight, batch.lm_labels.flatten(), out.rewards,
                          batch.chosen, batch.rejected, impl="torch").loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (shared_loss, shared_grads), (loss, grads) = results
    torch.testing.assert_close(shared_loss, loss, atol=1e-6, rtol=1e-5)
    assert shared_grads.keys() == grads.keys() and any("visual" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(shared_grads[name], grads[name], atol=1e-6, rtol=1e-4, msg=name)
    model.zero_grad()


def test_first_token_loss_is_the_lm_loss_at_the_reward_token(model):
    """The first-token term reads the reward head's own state: its CE equals the LM loss of the full hidden states
    restricted to the <reward> rows, whose labels are the explanations' first words; a sequence without an
    explanation adds nothing."""
    pairs = random_pairs(3, model.spec.image_size, seed=3)
    pairs[1] = PreferencePair(pairs[1].id, pairs[1].source, pairs[1].instruction, Candidate(pairs[1].a.image),
                              pairs[1].b, pairs[1].preference)
    batch = PairCollator(model.layout, model.spec)(pairs)
    with torch.no_grad():
        out = model(**batch.model_inputs())
    first = batch.first_labels()
    assert batch.num_explained == 5 == int((first != IGNORE_INDEX).sum())
    words = [model.tokenizer.decode([int(t)]) for t in first if t != IGNORE_INDEX]
    expected = [c.explanation.split()[0] for p in pairs for c in (p.a, p.b) if c.explanation]
    assert sorted(words) == sorted(expected)
    rows = torch.full_like(batch.lm_labels, IGNORE_INDEX)
    rows[torch.arange(len(rows)), batch.reward_pos] = first
    want = joint_loss(out.hidden.flatten(0, 1), model.lm_weight, rows.flatten(), out.rewards, batch.chosen,
                      batch.rejected, impl="torch").lm_loss
    torch.testing.assert_close(first_token_loss(out.features, model.lm_weight, first), want)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_reward_head_runs_in_fp32_under_bf16_autocast(kind):
    torch.manual_seed(0)
    head, h = RewardHead(64, kind, 1), 6.0 + torch.randn(8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(h.bfloat16())
    # A bf16 reward would be rounded to 1/32 near 6: pairs closer than that would tie.
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, head.net(h.bfloat16().float())[..., 0], atol=0, rtol=0)


def test_save_and_load_roundtrip(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    loaded = RewardModel.from_pretrained(tmp_path / "ckpt").eval()
    batch = PairCollator(model.layout, model.spec)(random_pairs(2, model.spec.image_size, seed=1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch.model_inputs()).rewards, model(**batch.model_inputs()).rewards)
    assert json.loads((tmp_path / "ckpt" / "jrm.json").read_text())["loss"]["alpha"] == 0.7


@pytest.mark.parametrize("layout,named", [(None, "source-instruction-edited"),
                                          ("instruction-source-edited", "instruction-source-edited")])
def test_a_checkpoint_of_another_token_layout_is_refused(model, tmp_path, layout, named):
    """A checkpoint from before the instruction moved after both images (no token_layout saved), or of any other
    layout, would score with the wrong token order: loading names the layout instead."""
    model.save_pretrained(tmp_path / "ckpt")
    config_file = tmp_path / "ckpt" / "jrm.json"
    saved = json.loads(config_file.read_text())
    assert saved["model"]["token_layout"] == "source-edited-instruction"
    if layout is None:
        del saved["model"]["token_layout"]
    else:
        saved["model"]["token_layout"] = layout
    config_file.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=f"token layout '{named}'"):
        RewardModel.from_pretrained(tmp_path / "ckpt")


def test_bad_records_name_the_record(model, tmp_path):
    collate = PairCollator(model.layout, model.spec)
    good = random_pairs(1, model.spec.image_size)[0]
    empty = PreferencePair("rec-empty", good.source, "  ", good.a, good.b, "a")
    with pytest.raises(ValueError, match="rec-empty.*empty instruction"):
        collate([empty])
    missing = PreferencePair("rec-missing", tmp_path / "nope.png", "make it red", good.a, good.b, "a")
    with pytest.raises(ValueError, match="rec-missing.*source image"):
        collate([missing])
    bad_label = PreferencePair("rec-label", good.source, "make it red", good.a, good.b, "left")
    with pytest.raises(ValueError, match="rec-label.*preference"):
        collate([bad_label])
    long = PreferencePair("rec-long", good.source, "red " * 400, good.a, good.b, "a")
    with pytest.raises(ValueError, match="rec-long.*max_length"):
        collate([long])


def test_unsupported_backbone_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        load_backbone(tmp_path)
    with pytest.raises(ValueError, match="not a model folder"):
        load_backbone(tmp_path / "empty")
