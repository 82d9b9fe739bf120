// where the atlas' data (BASE) and the run's files (ROOT) are, relative to this page; build_atlas rewrites it
var ATLAS_BASE = "", ATLAS_ROOT = "../";
