"""Names of everything scsalient writes into AnnData / MuData.

Every key that a model or a ``tl`` function writes lives here, once, so that models, ``tl`` and
``pl`` cannot disagree. The table in ``docs/stored_results.md`` documents the same keys; a test
checks that the two stay in sync. These names are part of the public API and stable across
versions.
"""

from __future__ import annotations

from typing import Final


class NACTKeys:
    """Keys written by :class:`scsalient.model.NACT`."""

    PREDICTION: Final = "nact_prediction"  # obs, categorical predicted label
    CONFIDENCE: Final = "nact_confidence"  # obs, float max class probability
    FAMILIARITY: Final = "nact_familiarity"  # obs, float conformal p-value of resembling a reference type
    PROBABILITIES: Final = "nact_probabilities"  # obsm, DataFrame cells x classes
    ATTENTION: Final = "nact_attention"  # obsm, sparse csr float32 cells x genes (top genes per cell)
    ATTENTION_MEAN: Final = "nact_attention_mean"  # varm, DataFrame genes x classes
    LATENT: Final = "X_nact"  # obsm, float32 cells x latent dimensions
    OVER_CLUSTERING: Final = "nact_over_clustering"  # obs, categorical over-clustering (majority voting)
    MAJORITY_VOTING: Final = "nact_majority_voting"  # obs, categorical majority label of the cluster
    AGREEMENT: Final = "nact_agreement"  # obs, float share of the cluster voting for that label
    UNS: Final = "nact"  # uns, dict with classes and settings
    CELL_TYPE: Final = "nact_cell_type"  # obs, cluster annotation from a marker query
    # the generic names used by the classifiers' shared read-out
    EXPLANATION: Final = ATTENTION
    EXPLANATION_MEAN: Final = ATTENTION_MEAN


class SCTABKeys:
    """Keys written by :class:`scsalient.model.SCTAB`."""

    PREDICTION: Final = "sctab_prediction"  # obs, categorical predicted label
    UNCERTAINTY: Final = "sctab_uncertainty"  # obs, float 1 - max mean probability
    DISAGREEMENT: Final = "sctab_disagreement"  # obs, float fraction of members disagreeing
    FAMILIARITY: Final = "sctab_familiarity"  # obs, float conformal p-value of resembling a reference type
    PROBABILITIES: Final = "sctab_probabilities"  # obsm, DataFrame cells x classes
    EMBEDDING: Final = "X_sctab"  # obsm, float32 cells x (members * n_d)
    MASK: Final = "sctab_mask"  # obsm, sparse csr float32 cells x genes
    MASK_MEAN: Final = "sctab_mask_mean"  # varm, DataFrame genes x classes
    OVER_CLUSTERING: Final = "sctab_over_clustering"  # obs, categorical over-clustering (majority voting)
    MAJORITY_VOTING: Final = "sctab_majority_voting"  # obs, categorical majority label of the cluster
    AGREEMENT: Final = "sctab_agreement"  # obs, float share of the cluster voting for that label
    UNS: Final = "sctab"  # uns, dict with classes and settings
    # the generic names used by the classifiers' shared read-out
    EXPLANATION: Final = MASK
    EXPLANATION_MEAN: Final = MASK_MEAN
    LATENT: Final = EMBEDDING


class ModuleAEKeys:
    """Keys written by :class:`scsalient.model.ModuleAE` and :func:`scsalient.tl.gene_set_impact`."""

    LATENT: Final = "X_moduleae"  # obsm, float32 cells x units (by convention; the model returns it)
    SALIENCY: Final = "moduleae_saliency"  # varm, DataFrame genes x units, mean |saliency|
    UNS: Final = "moduleae"  # uns, dict: saliency settings, per-group saliency, gene-set impact


class SalientKeys:
    """Keys written by the salient-gene and marker-query tools in :mod:`scsalient.tl`."""

    SALIENT_GENES: Final = "salient_genes"  # uns, rank_genes_groups-style record
    CELL_TYPE_QUERY: Final = "cell_type_query"  # uns, per-group ranked candidate types


class ClusterKeys:
    """Keys written by :func:`scsalient.pp.cluster_labels`."""

    LEIDEN: Final = "leiden"  # obs, categorical cluster label


class SimulationKeys:
    """Keys written by :func:`scsalient.datasets.simulate`."""

    CELL_TYPE: Final = "cell_type"  # obs
    DONOR: Final = "donor"  # obs
    UNS: Final = "simulation"  # uns, the planted ground truth
    MODULE_ACTIVITY: Final = "simulation_module_activity"  # obsm, float32 cells x modules
    TYPE_EFFECT: Final = "simulation_type_effect"  # varm, float32 genes x cell types (log scale)
    DONOR_EFFECT: Final = "simulation_donor_effect"  # varm, float32 genes x donors (log scale)
    LIBRARY_SIZE: Final = "library_size"  # obs, planted total counts per cell
    LINKED_GENE: Final = "linked_gene"  # atac var, gene a regulatory peak drives ("" for none)
    REGULATORY_STATE: Final = "simulation_regulatory_state"  # atac obsm, float32 cells x links
    OPEN_PROBABILITY: Final = "simulation_open_probability"  # atac varm, float32 peaks x cell types


class TranslatorKeys:
    """Keys written by :func:`scsalient.tl.peak_gene_links`."""

    UNS: Final = "translator"  # mdata.uns, dict with the links table and the settings
    LINKS: Final = "links"  # uns["translator"], DataFrame gene, peak, score, direction, rank, distance
