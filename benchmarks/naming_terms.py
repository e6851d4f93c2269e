"""Cell Ontology terms of the naming benchmark's dataset labels and marker-database names.

One place for both mappings (term names of ``cl-basic.obo`` release 2022-11-25, or CL IDs).
A database name missing here has no term: the benchmark counts it wrong and lists it.
"""

from __future__ import annotations

#: dataset label -> Cell Ontology term (name or ID)
LABEL_TERMS = {
    # Kang 2018 (8k and the muscat subsets)
    "CD4 T cells": "CD4-positive, alpha-beta T cell",
    "CD8 T cells": "CD8-positive, alpha-beta T cell",
    "CD14+ Monocytes": "CD14-positive monocyte",
    "FCGR3A+ Monocytes": "CD14-low, CD16-positive monocyte",
    "B cells": "B cell",
    "NK cells": "natural killer cell",
    # Ding CEL-Seq2
    "Cytotoxic T cell": "CD8-positive, alpha-beta T cell",
    "CD4+ T cell": "CD4-positive, alpha-beta T cell",
    "CD16+ monocyte": "CD14-low, CD16-positive monocyte",
    "CD14+ monocyte": "CD14-positive monocyte",
    "Megakaryocyte": "megakaryocyte",
    "B cell": "B cell",
    # pbmc68k_reduced (bulk_labels)
    "Dendritic": "dendritic cell",
    "CD14+ Monocyte": "CD14-positive monocyte",
    "CD19+ B": "B cell",
    "CD4+/CD25 T Reg": "regulatory T cell",
    "CD8+ Cytotoxic T": "CD8-positive, alpha-beta T cell",
    "CD8+/CD45RA+ Naive Cytotoxic": "naive thymus-derived CD8-positive, alpha-beta T cell",
    "CD56+ NK": "natural killer cell",
    "CD4+/CD45RO+ Memory": "CD4-positive, alpha-beta memory T cell",
    "CD34+": "hematopoietic precursor cell",
    "CD4+/CD45RA+/CD25- Naive T": "naive thymus-derived CD4-positive, alpha-beta T cell",
    # Spectra tumour-infiltrating immune cells ("MDC": monocytes, macrophages and dendritic cells)
    "CD8_T": "CD8-positive, alpha-beta T cell",
    "CD4_T": "CD4-positive, alpha-beta T cell",
    "MDC": "myeloid leukocyte",
    "Treg": "regulatory T cell",
    "B_memory": "memory B cell",
    "NK": "natural killer cell",
    "plasma": "plasma cell",
    "B_naive": "naive B cell",
    "DC": "dendritic cell",
    "gdT": "gamma-delta T cell",
    "pDC": "plasmacytoid dendritic cell",
    "mast": "mast cell",
    "B_GC": "germinal center B cell",
    "ILC3": "group 3 innate lymphoid cell",
    # pancreas
    "alpha": "pancreatic A cell",
    "beta": "type B pancreatic cell",
    "delta": "pancreatic D cell",
    "gamma": "pancreatic PP cell",
    "ductal": "pancreatic ductal cell",
    "acinar": "pancreatic acinar cell",
    "stellate": "pancreatic stellate cell",
}

#: PanglaoDB cell type -> Cell Ontology term (name or ID)
DATABASE_TERMS = {
    "B cells": "B cell",
    "B cells memory": "memory B cell",
    "B cells naive": "naive B cell",
    "Basophils": "basophil",
    "Dendritic cells": "dendritic cell",
    "Eosinophils": "eosinophil",
    "Erythroblasts": "erythroblast",
    "Erythroid-like and erythroid precursor cells": "erythroid lineage cell",
    "Gamma delta T cells": "gamma-delta T cell",
    "Macrophages": "macrophage",
    "Mast cells": "mast cell",
    "Megakaryocytes": "megakaryocyte",
    "Monocytes": "monocyte",
    "Myeloid-derived suppressor cells": "myeloid suppressor cell",
    "NK cells": "natural killer cell",
    "Natural killer T cells": "mature NK T cell",
    "Neutrophils": "neutrophil",
    "Nuocytes": "group 2 innate lymphoid cell",
    "Plasma cells": "plasma cell",
    "Plasmacytoid dendritic cells": "plasmacytoid dendritic cell",
    "Platelets": "platelet",
    "Red pulp macrophages": "splenic red pulp macrophage",
    "Reticulocytes": "reticulocyte",
    "T cells": "T cell",
    "T cytotoxic cells": "cytotoxic T cell",
    "T follicular helper cells": "T follicular helper cell",
    "T helper cells": "helper T cell",
    "T memory cells": "memory T cell",
    "T regulatory cells": "regulatory T cell",
    "Acinar cells": "pancreatic acinar cell",
    "Alpha cells": "pancreatic A cell",
    "Beta cells": "type B pancreatic cell",
    "Delta cells": "pancreatic D cell",
    "Ductal cells": "pancreatic ductal cell",
    "Epsilon cells": "pancreatic epsilon cell",
    "Gamma (PP) cells": "pancreatic PP cell",
    "Pancreatic progenitor cells": "pancreatic endocrine cell",
    "Pancreatic stellate cells": "pancreatic stellate cell",
    "Peri-islet Schwann cells": "Schwann cell",
}
