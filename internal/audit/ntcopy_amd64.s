#include "textflag.h"

// func ntCopy(dst, src *byte, chunks int)
//
// Four chunks (a cache line, when dst is line-aligned) a round, so that a
// line's write-combining buffer fills before the next line's starts; then
// the chunks left one by one.
TEXT ·ntCopy(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ chunks+16(FP), CX
	CMPQ CX, $4
	JLT  single

lines:
	MOVOU  0(SI), X0
	MOVOU  16(SI), X1
	MOVOU  32(SI), X2
	MOVOU  48(SI), X3
	MOVNTO X0, 0(DI)
	MOVNTO X1, 16(DI)
	MOVNTO X2, 32(DI)
	MOVNTO X3, 48(DI)
	ADDQ   $64, SI
	ADDQ   $64, DI
	SUBQ   $4, CX
	CMPQ   CX, $4
	JGE    lines

single:
	TESTQ CX, CX
	JLE   done

one:
	MOVOU  (SI), X0
	MOVNTO X0, (DI)
	ADDQ   $16, SI
	ADDQ   $16, DI
	DECQ   CX
	JNZ    one

done:
	RET

// func storeFence()
TEXT ·storeFence(SB), NOSPLIT, $0-0
	SFENCE
	RET
