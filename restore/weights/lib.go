package weights

import _ "embed"

// Library is gpuwarm_weights.py, the PyTorch side of the protocol, as
// `gpuwarm weights-lib` writes it out for workloads to import.
//
//go:embed gpuwarm_weights.py
var Library []byte

// LibraryName is the library's file name.
const LibraryName = "gpuwarm_weights.py"
