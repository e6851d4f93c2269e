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
    # MOp SNARE-seq2 (mouse primary motor cortex; cell_type, with cell_type_coarse in brackets).
    # Layer 2/3 and 4/5 IT neurons have MOp terms of their own; labels whose projection class
    # neither the label nor its coarse group gives are mapped to the closest term that is surely
    # right, and the comment says so.
    "E2Rasgrf2": "CL:4023047",  # [L2/3] L2/3 intratelencephalic projecting glutamatergic neuron of MOp
    "E3Rmst": "CL:4023047",  # [L2/3] as above
    "E3Rorb": "CL:4023047",  # [L2/3] as above
    "E4Il1rapl2": "CL:4023048",  # [L4/5] L4/5 intratelencephalic projecting glutamatergic neuron of MOp
    "E4Thsd7a": "CL:4023048",  # [L4/5] as above
    # [L4/5] layer-5 excitatory types whose projection class (IT, ET or NP: Tshz2 marks NP
    # neurons) the labels do not give: the closest term that is surely right
    "E5Galnt14": "glutamatergic neuron",
    "E5Parm1": "glutamatergic neuron",
    "E5Sulf1": "glutamatergic neuron",
    "E5Tshz2": "glutamatergic neuron",
    # [L6] one label for layer 6 (Tle4 and Foxp2 suggest corticothalamic neurons, but layer 6 also
    # holds IT and L6b neurons): the closest term that is surely right
    "E6Tle4": "glutamatergic neuron",
    # [Clau] claustrum-like excitatory neurons (Nr4a2, Synpr); the ontology has no claustrum term
    "Clau": "glutamatergic neuron",
    "InV": "vip GABAergic cortical interneuron",  # [CGE]
    "InS": "sst GABAergic cortical interneuron",  # [Sst]
    "InP": "pvalb GABAergic cortical interneuron",  # [Pvalb]
    # [Npy] Npy- and Lamp5-expressing interneurons (neurogliaform-like, but the label does not
    # say so): the common parent of the cortical interneuron subclasses
    "InN": "cerebral cortex GABAergic interneuron",
    "Ast": "astrocyte",
    "Mic": "microglial cell",
    "OPC": "oligodendrocyte precursor cell",
    "OliM": "oligodendrocyte",  # [Oligo] mature oligodendrocytes
    "OliI": "oligodendrocyte",  # [Oligo] immature oligodendrocytes: the release has no such term
    "Endo": "endothelial cell",
    "Peri": "pericyte",
    # [Mis] not named by the data source (about 11% of nuclei): low counts, neuronal genes
    # (Lingo2, Slc17a7, Rasgrf2) and no glial or vascular marker, so the closest term that is
    # surely right is "neuron"
    "Mis": "neuron",
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
    # brain (mouse markers for MOp)
    "Adrenergic neurons": "adrenergic neuron",
    "Anterior pituitary gland cells": "pituitary gland cell",  # no anterior-lobe term: the parent
    "Astrocytes": "astrocyte",
    "Bergmann glia": "Bergmann glial cell",
    "Cajal-Retzius cells": "Cajal-Retzius cell",
    "Cholinergic neurons": "cholinergic neuron",
    "Choroid plexus cells": "choroid plexus epithelial cell",
    "Dopaminergic neurons": "dopaminergic neuron",
    "Ependymal cells": "ependymal cell",
    "GABAergic neurons": "GABAergic neuron",
    "Glutaminergic neurons": "glutamatergic neuron",  # PanglaoDB's spelling
    "Glycinergic neurons": "glycinergic neuron",
    # "Immature neurons" has no term in this release (a neuroblast is a different thing): unmapped,
    # so the benchmark counts it wrong and lists it
    "Interneurons": "interneuron",
    "Meningeal cells": "leptomeningeal cell",  # no term for meningeal cells as a whole
    "Microglia": "microglial cell",
    "Motor neurons": "motor neuron",
    "Neural stem/precursor cells": "neural stem cell",
    "Neuroblasts": "neuroblast (sensu Vertebrata)",
    "Neuroendocrine cells": "neuroendocrine cell",
    "Neurons": "neuron",
    "Noradrenergic neurons": "noradrenergic neuron",
    "Oligodendrocyte progenitor cells": "oligodendrocyte precursor cell",
    "Oligodendrocytes": "oligodendrocyte",
    "Pinealocytes": "pinealocyte",
    "Purkinje neurons": "Purkinje cell",
    "Pyramidal cells": "pyramidal neuron",
    "Radial glia cells": "radial glial cell",
    "Retinal ganglion cells": "retinal ganglion cell",
    "Satellite glial cells": "perineuronal satellite cell",
    "Schwann cells": "Schwann cell",
    "Serotonergic neurons": "serotonergic neuron",
    "Tanycytes": "tanycyte",
    "Trigeminal neurons": "trigeminal neuron",
    # vasculature (MOp's endothelial cells and pericytes)
    "Endothelial cells": "endothelial cell",
    "Endothelial cells (aorta)": "aortic endothelial cell",
    "Endothelial cells (blood brain barrier)": "brain microvascular endothelial cell",
    "Pericytes": "pericyte",
}
