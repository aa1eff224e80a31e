"""Graph data and graph models: the SBM is seeded, class-correlated and needs its structure; karate club has
the real club's shape; PyG files round-trip and missing ones name what is expected; GCN / GraphSAGE run the
full graph and return the requested nodes' logits; graph models and graph data only go together; the CLI
trains ForwardGNN on an SBM end to end."""
import json
import os
import pickle
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
import torch

from bioplaus.data.graphs import Graph, karate, pyg, sbm
from bioplaus.errors import ConfigError
from bioplaus.models import GCN, MLP, GraphSAGE
from bioplaus.run import check_fit

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny graphs/nets run fastest on one thread


def _labels(d):
    y = torch.full((d.graph.num_nodes,), -1)
    y[d.x_train], y[d.x_test] = d.y_train, d.y_test
    return y


def _centroid_acc(d, x):
    """Test accuracy of the nearest class centroid, centroids from the training nodes' features x [V, F]."""
    mu = torch.stack([x[d.x_train][d.y_train == c].mean(0) for c in range(d.n_classes)])
    return (torch.cdist(x[d.x_test], mu).argmin(1) == d.y_test).float().mean().item()


def test_sbm_is_seeded():
    a, b, c = sbm(seed=0), sbm(seed=0), sbm(seed=1)
    assert torch.equal(a.graph.x, b.graph.x) and torch.equal(a.graph.edge_index, b.graph.edge_index)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.graph.x, c.graph.x) and not torch.equal(a.x_train, c.x_train)


def test_sbm_shape_split_and_edges():
    d = sbm(n_nodes=1000, n_classes=5, train_fraction=0.2, test_fraction=0.5)
    g = d.graph
    assert g.x.shape == (1000, 256) and d.n_classes == 5 and d.x_train.dtype == torch.long
    assert len(d.x_train) == 200 and len(d.x_test) == 500
    assert not set(d.x_train.tolist()) & set(d.x_test.tolist())
    e = g.edge_index
    assert (e[0] != e[1]).all()                                              # no self loops
    assert set(map(tuple, e.t().tolist())) == set(map(tuple, e.flip(0).t().tolist()))   # undirected
    assert len(torch.unique(e, dim=1).t()) == e.shape[1]                      # no duplicates
    expected = 1000 * (0.02 * 199 + 0.002 * 800)                              # directed edges, E[degree] * V
    assert abs(g.num_edges - expected) < 0.1 * expected
    y = _labels(d)
    assert torch.bincount(y[y >= 0], minlength=5).min() > 100                 # balanced classes
    homophily = (y[e[0]] == y[e[1]])[(y[e[0]] >= 0) & (y[e[1]] >= 0)].float().mean().item()
    assert 0.6 < homophily < 0.8                                              # 3.98 / (3.98 + 1.6) = 0.71


def test_sbm_features_are_ambiguous_and_structure_helps():
    """Class-correlated features (well above chance 0.2) that are ambiguous alone, while one and two rounds of
    neighbour averaging (what GNN layers do) make the classes separable: the graph matters."""
    d = sbm()
    g = d.graph
    A = torch.zeros(g.num_nodes, g.num_nodes)
    A[g.edge_index[0], g.edge_index[1]] = 1
    A += torch.eye(g.num_nodes)
    A /= A.sum(1, keepdim=True)
    alone, one_hop, two_hop = _centroid_acc(d, g.x), _centroid_acc(d, A @ g.x), _centroid_acc(d, A @ A @ g.x)
    assert 0.4 < alone < 0.7                                                  # measured 0.566
    assert one_hop > alone + 0.2 and two_hop > 0.85                           # 0.892, 0.930


def test_sbm_informative_subset_and_errors():
    d = sbm(n_nodes=200, n_features=16, n_informative=4, feature_noise=0.0, nuisance_noise=0.0)
    y = _labels(d)
    x = d.graph.x
    assert torch.all(x[:, 4:] == 0)
    for c in range(5):                                                        # noise-free: x[:4] is the class mean
        assert torch.allclose(x[y == c, :4], x[y == c][:1, :4].expand(int((y == c).sum()), 4))
    with pytest.raises(ConfigError, match="n_informative"):
        sbm(n_features=8, n_informative=9)
    with pytest.raises(ConfigError, match="train_fraction"):
        sbm(train_fraction=0.7, test_fraction=0.5)


def test_karate_club():
    d = karate()
    g = d.graph
    assert g.num_nodes == 34 and g.num_edges == 156 and d.n_classes == 2      # 78 undirected edges, both ways
    assert torch.equal(g.x, torch.eye(34))
    assert d.x_train.tolist() == [0, 33] and d.y_train.tolist() == [0, 1]   # the two leaders
    assert len(d.x_test) == 32 and 0 not in d.x_test.tolist()
    y = _labels(d)
    assert torch.bincount(y).tolist() == [17, 17]
    assert karate(train_nodes=[1, 2, 30]).x_train.tolist() == [1, 2, 30]
    with pytest.raises(ConfigError, match="0..33"):
        karate(train_nodes=[40])


def test_pyg_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(ConfigError) as e:
        pyg(str(tmp_path), name="cora")
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("ind.cora.x", "ind.cora.allx", "ind.cora.graph", "ind.cora.test.index", "data.root=FILE.pt"):
        assert part in msg


def test_pyg_round_trip_of_a_saved_data_file(tmp_path):
    from torch_geometric.data import Data

    d0 = sbm(n_nodes=100, n_features=8)
    y = _labels(d0)
    y[y < 0] = 0
    data = Data(x=d0.graph.x, edge_index=d0.graph.edge_index, y=y)
    torch.save(data, tmp_path / "g.pt")
    d = pyg(str(tmp_path / "g.pt"), train_fraction=0.3, test_fraction=0.4, seed=1)
    assert torch.equal(d.graph.x, data.x) and torch.equal(d.graph.edge_index, data.edge_index)
    assert len(d.x_train) == 30 and len(d.x_test) == 40 and torch.equal(d.y_train, y[d.x_train])
    data.train_mask = torch.arange(100) < 10                                 # masks in the file give the split
    data.test_mask = torch.arange(100) >= 60
    torch.save(data.to_dict(), tmp_path / "m.pt")
    d = pyg(str(tmp_path / "m.pt"))
    assert d.x_train.tolist() == list(range(10)) and d.x_test.tolist() == list(range(60, 100))


def test_pyg_reads_planetoid_raw_files(tmp_path):
    """The raw Planetoid layout (<root>/<Name>/raw/ind.<name>.*), written here for a 520-node ring (Planetoid
    reserves the 500 nodes after the labelled ones for validation): 2 labelled, 10 test nodes."""
    import scipy.sparse as sp  # scikit-learn's dependency: always installed

    raw = tmp_path / "Tiny" / "raw"
    raw.mkdir(parents=True)
    V, n_test = 520, 10
    feats = np.random.default_rng(0).random((V, 4)).astype(np.float32)
    onehot = np.eye(2)[np.arange(V) % 2]
    ring = defaultdict(list, {v: [(v - 1) % V, (v + 1) % V] for v in range(V)})
    parts = {"x": sp.csr_matrix(feats[:2]), "allx": sp.csr_matrix(feats[:V - n_test]),
             "tx": sp.csr_matrix(feats[V - n_test:]), "y": onehot[:2], "ally": onehot[:V - n_test],
             "ty": onehot[V - n_test:], "graph": ring}
    for k, v in parts.items():
        (raw / f"ind.tiny.{k}").write_bytes(pickle.dumps(v))
    (raw / "ind.tiny.test.index").write_text("".join(f"{v}\n" for v in range(V - n_test, V)))
    d = pyg(str(tmp_path), name="tiny")
    assert d.graph.num_nodes == V and d.graph.num_edges == 2 * V and d.n_classes == 2
    assert torch.allclose(d.graph.x, torch.from_numpy(feats))
    assert d.x_train.tolist() == [0, 1] and d.x_test.tolist() == list(range(V - n_test, V))
    assert d.y_test.tolist() == [v % 2 for v in range(V - n_test, V)]


@pytest.mark.parametrize("cls", [GCN, GraphSAGE])
def test_models_run_the_full_graph_and_index_the_requested_nodes(cls):
    d = sbm(n_nodes=100, n_features=8)
    torch.manual_seed(0)
    m = cls([], d.n_classes, graph=d.graph, hidden=[16, 12]).eval()
    ids = torch.tensor([5, 0, 99, 5])
    logits = m(ids)
    assert logits.shape == (4, 5) and m.features(ids).shape == (4, 12) and m.dims == [16, 12]
    full = m(torch.arange(100))
    assert torch.allclose(logits, full[ids]) and torch.allclose(logits[0], logits[3])
    hs = m.hidden_states()
    assert [tuple(h.shape) for h in hs] == [(100, 16), (100, 12)]
    assert torch.allclose(m.head(hs[-1])[ids], logits, atol=1e-6)            # head on h_L, then indexed
    assert "x" not in m.state_dict() and "edge_index" not in m.state_dict()  # the graph comes with the data


def test_gcn_layer_is_the_normalised_propagation():
    """h_1 = ReLU(D^-1/2 (A + I) D^-1/2 x W + b) on the karate graph."""
    d = karate()
    m = GCN([], 2, graph=d.graph, hidden=[4])
    A = torch.zeros(34, 34)
    A[d.graph.edge_index[0], d.graph.edge_index[1]] = 1
    A += torch.eye(34)
    dinv = A.sum(1).rsqrt()
    conv = m.layers[0].conv
    expected = torch.relu(dinv[:, None] * A * dinv[None] @ conv.lin(d.graph.x) + conv.bias)
    assert torch.allclose(m.hidden_states()[0], expected, atol=1e-5)


def test_graph_models_and_graph_data_only_go_together(digits):
    d = sbm(n_nodes=50, n_features=4)
    with pytest.raises(ConfigError, match="needs graph data"):
        GCN([1, 8, 8], 10)
    gcn = GCN([], 5, graph=d.graph)
    with pytest.raises(ConfigError, match="is a graph model and needs graph data"):
        check_fit(gcn, digits)
    with pytest.raises(ConfigError, match="is not a graph model: use model=gcn"):
        check_fit(MLP([4], 5), d)
    check_fit(gcn, d)
    with pytest.raises(ConfigError, match="node ids"):
        gcn(digits.x_test[:3])


def test_missing_torch_geometric_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)                # import now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[graph\]'"):
        GCN([], 2, graph=Graph(torch.eye(3), torch.tensor([[0, 1], [1, 0]])))


RUN = [sys.executable, "-m", "bioplaus.run"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}          # small graphs: one thread (see one_thread)


def test_cli_trains_forward_gnn_on_an_sbm(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(RUN + ["rule=forward_gnn", "model=gcn", "data=sbm", "trainer.epochs=3", "trainer.progress=false",
                              f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert (m["rule"], m["model"], m["data"]) == ("forward_gnn_sf", "gcn", "sbm")
    assert m["test_acc"] > 0.3 and m["passes_per_update"] == {"forward": 1, "backward": 1}
    assert m["saved_for_backward_mb"] > 0 and m["train_mac_per_step"] > 0
    # inference statistics: the GCNConv's dense products are counted (message passing is not)
    assert m["stats"]["mac_per_sample"] > 0 and (out / "stats.h5").exists()


@pytest.mark.parametrize("args,message", [
    (["model=mlp", "data=sbm"], "is not a graph model: use model=gcn or model=sage"),
    (["rule=forward_gnn", "model=gcn", "data=sbm", "rule.variant=nope"], "unknown rule.variant 'nope'"),
    (["model=gcn", "data=pyg", "data.root=/nonexistent"], "missing ind.cora.x"),
])
def test_cli_bad_graph_input_is_one_line(tmp_path, args, message):
    out = tmp_path / "run"
    r = subprocess.run(RUN + args + ["trainer.progress=false", f"hydra.run.dir={out}"], capture_output=True, text=True,
                       timeout=300, env=ENV)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
