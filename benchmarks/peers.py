"""Reference numbers of peer systems measured by the team on the same splits (research/peers.md).

They are shown beside the numbers this suite measures, always marked "from peers.md", for
systems that a budget does not run (scANVI, CellTypist and XGBoost run only under the full budget).
"""

PEERS_SOURCE = "peers.md (team measurements on the same splits, 2 CPU cores)"

# dataset -> system -> (macro-F1, accuracy, fit seconds, prediction cells/s as text)
CLASSIFICATION = {
    "kang": {
        "CellTypist 1.7.1": (0.996, 0.997, 6, "25k–39k"),
        "scANVI (SCVI 100 + SCANVI 20 epochs, scArches query 20)": (
            0.992,
            0.995,
            129,
            "~300 incl. query fit",
        ),
        "logistic regression": (0.994, 0.996, 1.3, "71k–421k"),
        "XGBoost on 50 PCs": (0.992, 0.994, 2, "32k–45k"),
        "MLP 100-50-25": (0.994, 0.996, 5, "37k–84k"),
    },
    "mop": {
        "CellTypist 1.7.1": (0.627, 0.653, 14, "25k–39k"),
        "scANVI (SCVI 100 + SCANVI 20 epochs, scArches query 20)": (
            0.697,
            0.738,
            170,
            "~300 incl. query fit",
        ),
        "logistic regression": (0.648, 0.680, 12.5, "71k–421k"),
        "XGBoost on 50 PCs": (0.623, 0.753, 6, "32k–45k"),
        "MLP 100-50-25": (0.627, 0.695, 6, "37k–84k"),
    },
}

# which peers.md row corresponds to a system of this suite
SYSTEM_TO_PEER = {
    "celltypist": "CellTypist 1.7.1",
    "logreg": "logistic regression",
    "xgboost": "XGBoost on 50 PCs",
    "mlp": "MLP 100-50-25",
    "scanvi": "scANVI (SCVI 100 + SCANVI 20 epochs, scArches query 20)",
}
# peers listed in peers.md that this suite has no system for, with the reason
NEVER_RUN: dict[str, str] = {}

# ranker -> (precision@25 primary, broad) on Kang, true labels
MARKERS = {
    "scanpy logreg": (0.34, 0.43),
    "scanpy t-test": (0.24, 0.30),
    "scanpy wilcoxon": (0.23, 0.26),
    "random 25 genes": (0.01, 0.02),
}
