#include "textflag.h"

// func interleaveSSE2(out, lo, hi *byte, n int)
TEXT ·interleaveSSE2(SB), NOSPLIT, $0-32
	MOVQ out+0(FP), DI
	MOVQ lo+8(FP), SI
	MOVQ hi+16(FP), DX
	MOVQ n+24(FP), CX

loop:
	CMPQ      CX, $16
	JB        done
	MOVOU     (SI), X0
	MOVOU     (DX), X1
	MOVO      X0, X2
	PUNPCKLBW X1, X0 // lo[0], hi[0], ... lo[7], hi[7]
	PUNPCKHBW X1, X2 // lo[8], hi[8], ... lo[15], hi[15]
	MOVOU     X0, (DI)
	MOVOU     X2, 16(DI)
	ADDQ      $16, SI
	ADDQ      $16, DX
	ADDQ      $32, DI
	SUBQ      $16, CX
	JMP       loop

done:
	RET
