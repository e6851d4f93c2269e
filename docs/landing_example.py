import matplotlib.pyplot as plt
import scanpy as sc

import scsalient as ss

adata = sc.datasets.pbmc68k_reduced().raw.to_adata()  # log-normalised; counts work too
ss.model.NACT.setup_anndata(adata, labels_key="bulk_labels")  # None: Leiden clusters
model = ss.model.NACT(adata)
model.train()  # every gene; defaults chosen on other studies
model.annotate()  # obs["nact_prediction"], obs["nact_confidence"], ...
ss.tl.salient_genes(adata, groupby="nact_prediction")  # TF-IDF-ranked attention
sc.pl.rank_genes_groups_dotplot(adata, key="salient_genes", n_genes=4, show=False)
plt.savefig("docs/_static/landing_salient_genes.png", dpi=80, bbox_inches="tight")
