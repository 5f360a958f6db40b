"""An actor checks the learner's model card before it takes any weights: another model (fewer layers of
the same shapes, another vocabulary) is refused with one line naming both, and an engine that took fewer
tensors than were announced stops the actor rather than generating with a hybrid."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from tiller.actors.model_check import LocalModel, mismatch
from tiller.actors.rollout import RolloutActor, WeightsDoNotFit
from tiller.config import Config, LearnerConfig, ModelConfig, RolloutConfig
from tiller.learner.coordinator import Coordinator
from tiller.learner.model_card import model_card
from tiller.learner.prompts import PromptStream
from tiller.learner.server import LearnerServer, WeightSnapshot
from tiller.models import TinyShape, ensure_tiny_policy
from tiller.protocol.transport import LearnerClient


def card_of(model_dir, incarnation: int = 1):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    return model_card(SimpleNamespace(reference=model, module=model), model_dir, "float32", incarnation), model


def local(model_dir, max_model_len: int = 128) -> LocalModel:
    from tiller.model_files import eos_ids

    return LocalModel.of(model_dir, eos_ids(model_dir), max_model_len)


@pytest.fixture(scope="module")
def one_layer_dir(tmp_path_factory):
    return ensure_tiny_policy(tmp_path_factory.mktemp("models") / "one-layer", shape=TinyShape(num_layers=1))


def test_the_same_model_fits(tiny_policy_dir):
    card, model = card_of(tiny_policy_dir)
    assert mismatch(card, local(tiny_policy_dir)) is None
    # every tensor that is published, tied ones under both names, in the publisher's order
    assert card.names == [n for n, _ in model.named_parameters(remove_duplicate=False)] + \
        [n for n, _ in model.named_buffers() if n in model.state_dict()]
    assert card.eos_ids == local(tiny_policy_dir).eos_ids and card.max_positions == TinyShape().max_positions


def test_a_learner_with_fewer_layers_of_the_same_shapes_is_refused(tiny_policy_dir, one_layer_dir):
    card, _ = card_of(one_layer_dir)
    problem = mismatch(card, local(tiny_policy_dir))
    assert problem is not None and "would keep their old weights" in problem and "model.layers.1." in problem
    assert str(tiny_policy_dir) in problem and "the learner's Qwen2ForCausalLM" in problem


def test_another_vocabulary_end_token_or_a_longer_context_is_refused(tiny_policy_dir):
    card, _ = card_of(tiny_policy_dir)
    mine = local(tiny_policy_dir)
    assert "vocabulary" in mismatch(card.__class__(**{**card.__dict__, "vocab_size": card.vocab_size + 1}), mine)
    assert "end-of-sequence" in mismatch(card.__class__(**{**card.__dict__, "eos_ids": [999]}), mine)
    assert "max_model_len 512" in mismatch(card, local(tiny_policy_dir, max_model_len=512))
    wrong = list(card.shapes)
    wrong[0] = [wrong[0][0] + 1, *wrong[0][1:]]
    assert f"{card.names[0]} is" in mismatch(card.__class__(**{**card.__dict__, "shapes": wrong}), mine)


class CountingEngine:
    """Takes at most `limit` tensors of a stream, as vLLM does when it skips names it does not expect."""

    def __init__(self, limit: int | None = None):
        self.limit, self.loaded = limit, []

    def load_weights(self, stream) -> int:
        for name, _ in stream:
            if self.limit is None or len(self.loaded) < self.limit:
                self.loaded.append(name)
        return len(self.loaded)


@pytest.fixture
def learner_with_card(free_address, tiny_policy_dir, one_layer_dir):
    coordinator = Coordinator(PromptStream([np.array([3, 4], np.int32)], [""]), LearnerConfig(), RolloutConfig())
    server = LearnerServer(coordinator, free_address)
    card, model = card_of(one_layer_dir, coordinator.incarnation)
    server.model_card = card
    server.publish(WeightSnapshot(1, [([n for n, _ in model.state_dict().items()],
                                       [t.detach().clone() for t in model.state_dict().values()])]))
    server.start()
    client = LearnerClient(server.address)
    deadline = time.monotonic() + 5
    while server._snapshot is None and time.monotonic() < deadline:
        time.sleep(0.01)
    yield server, client
    client.close()
    server.close()


def bare_actor(model_dir, client, engine) -> RolloutActor:
    actor = RolloutActor.__new__(RolloutActor)  # the sync loop alone: no vLLM engine to start
    actor.cfg, actor.actor_id, actor.client = Config(model=ModelConfig(path=str(model_dir))), "actor0", client
    actor.engine, actor.learner_incarnation, actor.version, actor.load_seconds = engine, -1, -1, 0.0
    actor.local_model, actor.card, actor.card_learner, actor.heartbeat = local(model_dir), None, -1, None
    return actor


def test_an_actor_refuses_another_model_before_taking_any_weights(learner_with_card, tiny_policy_dir):
    server, client = learner_with_card
    engine = CountingEngine()
    actor = bare_actor(tiny_policy_dir, client, engine)
    with pytest.raises(WeightsDoNotFit, match="would keep their old weights"):
        actor.sync(server.coordinator.incarnation, 1)
    assert engine.loaded == [] and actor.version == -1


def test_an_engine_that_took_fewer_tensors_than_announced_stops_the_actor(learner_with_card, one_layer_dir):
    server, client = learner_with_card
    actor = bare_actor(one_layer_dir, client, CountingEngine(limit=3))
    with pytest.raises(WeightsDoNotFit, match=r"the engine took 3 of the \d+ tensors sent \(\d+ announced\)"):
        actor.sync(server.coordinator.incarnation, 1)
    assert actor.version == -1
    fitting = bare_actor(one_layer_dir, client, CountingEngine())
    fitting.sync(server.coordinator.incarnation, 1)
    assert fitting.version == 1 and fitting.card.architecture == "Qwen2ForCausalLM"
