"""The 19 ISBI 2015 cephalometric landmarks, in the order of the annotation files."""

LANDMARK_NAMES: tuple[str, ...] = (
    "sella",
    "nasion",
    "orbitale",
    "porion",
    "subspinale",
    "supramentale",
    "pogonion",
    "menton",
    "gnathion",
    "gonion",
    "lower_incisal_incision",
    "upper_incisal_incision",
    "upper_lip",
    "lower_lip",
    "subnasale",
    "soft_tissue_pogonion",
    "posterior_nasal_spine",
    "anterior_nasal_spine",
    "articulare",
)
NUM_LANDMARKS = len(LANDMARK_NAMES)
