"""Link prediction data and task: the edge split never lets a test edge carry messages, negatives are non-edges,
balanced and disjoint; the ROC AUC is the Mann-Whitney statistic; graph models score pairs with a dot product that
learns; the trainer reports test_auc (and val_auc per epoch) from every output; bioplaus-run trains on data=sbm_link
end to end; the op counter counts message passing (E * d accumulates per propagation) by a hand count."""
import json

import pytest
import torch
from sklearn.metrics import roc_auc_score

from bioplaus.data.base import roc_auc
from bioplaus.data.graphs import Graph
from bioplaus.data.links import link_split, sbm_link, undirected_pairs
from bioplaus.errors import ConfigError
from bioplaus.models import GCN, GraphSAGE
from bioplaus.rules.backprop import Backprop
from bioplaus.stats.opcount import OpCounter
from bioplaus.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def links():
    return sbm_link(n_nodes=300, n_features=32, feature_noise=3.0, p_in=0.06, p_out=0.006)


def test_split_keeps_test_edges_out_of_the_graph_and_samples_true_non_edges(links):
    from bioplaus.data.graphs import sbm_graph

    _, full, _ = sbm_graph(300, 5, 0.06, 0.006, 32, 3.0, None, 1.0, 0)
    edges = set(map(tuple, undirected_pairs(full).tolist()))
    graph = set(map(tuple, undirected_pairs(links.graph.edge_index).tolist()))
    pos_tr = set(map(tuple, links.x_train[links.y_train == 1].tolist()))
    pos_te = set(map(tuple, links.x_test[links.y_test == 1].tolist()))
    neg = [tuple(p) for p in torch.cat([links.x_train[links.y_train == 0], links.x_test[links.y_test == 0]]).tolist()]
    assert pos_tr | pos_te == edges and not pos_tr & pos_te                 # every edge once, in one split
    assert graph == pos_tr and not graph & pos_te                          # messages run on training edges only
    assert len(pos_te) == round(0.2 * len(edges))
    assert len(set(neg)) == len(neg) and not set(neg) & edges and all(u < v for u, v in neg)
    assert links.y_train.float().mean() == 0.5 and links.y_test.float().mean() == 0.5   # balanced
    assert torch.allclose(links.graph.x.norm(dim=1), torch.ones(300))       # normalised feature rows
    assert links.task == "link" and links.model_kwargs()["task"] == "link" and links.n_classes == 2
    again = sbm_link(n_nodes=300, n_features=32, feature_noise=3.0, p_in=0.06, p_out=0.006)
    assert torch.equal(again.x_test, links.x_test)                          # seeded
    with pytest.raises(ConfigError, match="data.test_fraction must be in"):
        link_split("g", torch.randn(5, 2), torch.tensor([[0, 1], [1, 0]]), test_fraction=1.0)


def test_roc_auc_is_the_mann_whitney_statistic():
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        s, y = torch.randint(0, 6, (300,), generator=gen).float(), torch.randint(0, 2, (300,), generator=gen)
        assert roc_auc(s, y) == pytest.approx(roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)
    assert roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == 0.5


def test_graph_models_score_pairs_with_a_learning_dot_product(links):
    torch.manual_seed(0)
    for cls in (GCN, GraphSAGE):
        model = cls([2], 2, graph=links.graph, hidden=[16], task="link")
        pairs = links.x_test[:20]
        h = model.hidden_states()[-1]
        s = (h[pairs[:, 0]] * h[pairs[:, 1]]).sum(1)                       # the plain dot product at first
        assert torch.allclose(model(pairs), torch.stack([torch.zeros_like(s), s], 1), atol=1e-5)
        assert model.head.linear.weight.requires_grad
        with pytest.raises(ConfigError, match=r"takes node pairs \[B, 2\]"):
            model(pairs[:, 0])


def test_validation_pairs_leave_the_graph_and_the_trainer_refuses_an_in_graph_split():
    data = sbm_link(n_nodes=300, n_features=32, feature_noise=3.0, p_in=0.06, p_out=0.006)
    pos_before = set(map(tuple, data.x_train[data.y_train == 1].tolist()))
    n_train = len(data.x_train)
    cfg = TrainConfig(epochs=1, batch_size=100_000, progress=False, val_fraction=0.25)
    with pytest.raises(ConfigError, match=r"holds out its validation pairs itself.*hold_out\(0.25"):
        train(Backprop(GCN([2], 2, graph=data.graph, hidden=[8], task="link")), data, cfg, seed=0)
    data.hold_out(0.25, seed=3)
    graph = set(map(tuple, undirected_pairs(data.graph.edge_index).tolist()))
    pos_tr = set(map(tuple, data.x_train[data.y_train == 1].tolist()))
    pos_val = set(map(tuple, data.x_val[data.y_val == 1].tolist()))
    assert pos_tr | pos_val == pos_before and not pos_tr & pos_val          # the training edges, split in two
    assert graph == pos_tr and not graph & pos_val                         # validation edges carry no messages
    assert len(data.x_train) + len(data.x_val) == n_train and data.y_val.float().mean() == 0.5
    assert len(pos_val) == round(0.25 * len(pos_before))
    again = sbm_link(n_nodes=300, n_features=32, feature_noise=3.0, p_in=0.06, p_out=0.006)
    again.hold_out(0.25, seed=3)
    assert torch.equal(again.x_val, data.x_val)                             # seeded by the run's seed
    with pytest.raises(ConfigError, match="already holds a validation split"):
        data.hold_out(0.25, seed=3)
    m = train(Backprop(GCN([2], 2, graph=data.graph, hidden=[8], task="link")), data, cfg, seed=0)
    assert 0 <= m["val_auc"] <= 1                                           # the data's own split was used


def test_trainer_reports_auc_per_epoch_and_at_the_end():
    torch.manual_seed(0)
    links = sbm_link(n_nodes=300, n_features=32, feature_noise=3.0, p_in=0.06, p_out=0.006)
    links.hold_out(0.2, seed=0)
    rule = Backprop(GCN([2], 2, graph=links.graph, hidden=[32], task="link"))
    m = train(rule, links, TrainConfig(epochs=3, batch_size=100_000, progress=False, val_fraction=0.2), seed=0)
    assert {"test_auc", "val_auc"} <= set(m["history"][-1]) and 0 <= m["test_auc"] <= 1
    assert m["metric"] == "test_auc" and m["val_auc"] == m["history"][-1]["val_auc"]     # what compare / tune read
    rule.eval()
    logits = rule.predict(links.x_test)
    assert m["test_auc"] == pytest.approx(roc_auc(logits[:, 1] - logits[:, 0], links.y_test))
    node = train(Backprop(GCN([], 5, graph=links.graph, hidden=[8])), _node_data(links),
                 TrainConfig(epochs=1, progress=False), seed=0)
    assert "test_auc" not in node and node["metric"] == "test_acc"


def _node_data(links):
    from bioplaus.data.graphs import node_dataset

    y = torch.arange(300) % 5
    return node_dataset("n", links.graph.x, links.graph.edge_index, y, torch.arange(100), torch.arange(100, 300))


def test_cli_trains_on_the_sbm_link_split(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bioplaus.run", "+arm=forward_gnn_ff_gcn", "data=sbm_link", "data.n_nodes=200",
           "trainer.epochs=2", "trainer.val_fraction=0.1", "trainer.batch_size=100000", "trainer.progress=false",
           "stats.n_samples=40",
           f"hydra.run.dir={out}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env={**__import__("os").environ,
                                                                          "OMP_NUM_THREADS": "1"})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rule"] == "forward_gnn_ff_link" and 0 <= metrics["test_auc"] <= 1 and 0 <= metrics["val_auc"] <= 1
    assert metrics["train_ac_per_step"] > 0                                  # message passing is counted


def test_message_passing_is_counted_by_hand():
    """One GCNConv(F=3 -> d=4) on 5 nodes and 4 directed edges (+5 self loops, E' = 9): forward = V F d MACs
    (X W) + E' d ACs (aggregating the messages) + E' ACs (the degrees); backward = 2 V F d MACs (both gradients
    of X W) + E' d ACs (the gather's gradient scatters back). A 0/1 sparse adjacency times X [V, 7] is nnz * 7 ACs;
    a weighted one nnz * 7 MACs."""
    from torch_geometric.nn import GCNConv

    torch.manual_seed(0)
    x, e, conv = torch.randn(5, 3, requires_grad=True), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]), GCNConv(3, 4)
    with OpCounter() as fwd:
        y = conv(x, e)
    with OpCounter() as bwd:
        y.sum().backward()
    assert fwd.totals() == {"mac": 5 * 3 * 4, "ac": 9 * 4 + 9}
    assert bwd.totals() == {"mac": 2 * 5 * 3 * 4, "ac": 9 * 4}
    dense = torch.randn(5, 7)
    for values, kind in ((torch.ones(4), "ac"), (torch.rand(4) + 0.1, "mac")):
        adj = torch.sparse_coo_tensor(e, values, (5, 5))
        with OpCounter() as sp:
            torch.sparse.mm(adj, dense)
        assert sp.totals()[kind] == 4 * 7 and sum(sp.totals().values()) == 4 * 7


def test_graph_holds_training_edges_only_for_any_graph():
    x = torch.randn(6, 3)
    ring = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
    d = link_split("ring", x, torch.cat([ring, ring.flip(0)], 1), test_fraction=0.34, seed=1)
    assert isinstance(d.graph, Graph) and d.graph.num_edges == 2 * 4 and len(d.x_test) == 4


def test_pyg_link_splits_a_saved_graph_file(tmp_path):
    """data=pyg_link reads the same files as data=pyg (here a torch.save'd Data) and splits its edges."""
    from torch_geometric.data import Data

    from bioplaus.data.links import pyg_link

    g = sbm_link(n_nodes=120, n_features=8, normalize_features=False)
    edges = torch.cat([g.graph.edge_index, g.x_test[g.y_test == 1].t(), g.x_test[g.y_test == 1].t().flip(0)], 1)
    torch.save(Data(x=g.graph.x, edge_index=edges, y=torch.zeros(120, dtype=torch.long)), tmp_path / "g.pt")
    d = pyg_link(str(tmp_path / "g.pt"), test_fraction=0.25, seed=3)
    assert d.name == "g_link" and d.graph.x.shape == (120, 8)
    assert len(undirected_pairs(d.graph.edge_index)) + (d.y_test == 1).sum() == len(undirected_pairs(edges))
    with pytest.raises(ConfigError, match="data=pyg: missing"):
        pyg_link(str(tmp_path / "nowhere"))
