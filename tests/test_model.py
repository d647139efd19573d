import json

import numpy as np
import pytest
import torch

from helpers import random_pairs, tiny_reward_model
from jrm_engine.backbone import load_backbone
from jrm_engine.data import Candidate, PreferencePair
from jrm_engine.data.collate import PairCollator
from jrm_engine.model import RewardModel
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


def test_save_and_load_roundtrip(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    loaded = RewardModel.from_pretrained(tmp_path / "ckpt").eval()
    batch = PairCollator(model.layout, model.spec)(random_pairs(2, model.spec.image_size, seed=1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch.model_inputs()).rewards, model(**batch.model_inputs()).rewards)
    assert json.loads((tmp_path / "ckpt" / "jrm.json").read_text())["loss"]["alpha"] == 0.7


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
