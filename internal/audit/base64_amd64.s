#include "textflag.h"

// Constants of base64Blocks, one 16-byte vector each.

// Each 32-bit lane k takes input bytes 3k+1, 3k, 3k+2, 3k+1: the 24 bits
// of a group laid out so that two 16-bit multiplies move its four 6-bit
// fields to the lane's four bytes.
DATA b64shuf<>+0(SB)/8, $0x0405030401020001
DATA b64shuf<>+8(SB)/8, $0x0a0b090a07080607
GLOBL b64shuf<>(SB), RODATA|NOPTR, $16

// The first and third fields, at bits 10-15 and 22-27 of a lane.
DATA b64maskAC<>+0(SB)/8, $0x0fc0fc000fc0fc00
DATA b64maskAC<>+8(SB)/8, $0x0fc0fc000fc0fc00
GLOBL b64maskAC<>(SB), RODATA|NOPTR, $16

// Their multipliers (high halves): a to byte 0, c to byte 2.
DATA b64mulAC<>+0(SB)/8, $0x0400004004000040
DATA b64mulAC<>+8(SB)/8, $0x0400004004000040
GLOBL b64mulAC<>(SB), RODATA|NOPTR, $16

// The second and fourth fields, at bits 4-9 and 16-21 of a lane.
DATA b64maskBD<>+0(SB)/8, $0x003f03f0003f03f0
DATA b64maskBD<>+8(SB)/8, $0x003f03f0003f03f0
GLOBL b64maskBD<>(SB), RODATA|NOPTR, $16

// Their multipliers (low halves): b to byte 1, d to byte 3.
DATA b64mulBD<>+0(SB)/8, $0x0100001001000010
DATA b64mulBD<>+8(SB)/8, $0x0100001001000010
GLOBL b64mulBD<>(SB), RODATA|NOPTR, $16

DATA b64c51<>+0(SB)/8, $0x3333333333333333
DATA b64c51<>+8(SB)/8, $0x3333333333333333
GLOBL b64c51<>(SB), RODATA|NOPTR, $16

DATA b64c26<>+0(SB)/8, $0x1a1a1a1a1a1a1a1a
DATA b64c26<>+8(SB)/8, $0x1a1a1a1a1a1a1a1a
GLOBL b64c26<>(SB), RODATA|NOPTR, $16

DATA b64c13<>+0(SB)/8, $0x0d0d0d0d0d0d0d0d
DATA b64c13<>+8(SB)/8, $0x0d0d0d0d0d0d0d0d
GLOBL b64c13<>(SB), RODATA|NOPTR, $16

// What to add to a 6-bit value to make its character, by its class: 0 for
// 26-51 ('a'-26), 1-10 for 52-61 ('0'-52), 11 for 62 ('+'-62), 12 for 63
// ('/'-63), 13 for 0-25 ('A').
DATA b64offsets<>+0(SB)/8, $0xfcfcfcfcfcfcfc47
DATA b64offsets<>+8(SB)/8, $0x000041f0edfcfcfc
GLOBL b64offsets<>(SB), RODATA|NOPTR, $16

// func base64Blocks(dst, src *byte, blocks int)
// Encodes blocks*12 bytes of src as blocks*16 characters at dst. Each
// block reads 16 bytes of src (the last four are the next block's, or
// beyond: the caller leaves them readable).
TEXT ·base64Blocks(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ blocks+16(FP), CX
	TESTQ CX, CX
	JLE done
	MOVOU b64shuf<>(SB), X8
	MOVOU b64maskAC<>(SB), X9
	MOVOU b64mulAC<>(SB), X10
	MOVOU b64maskBD<>(SB), X11
	MOVOU b64mulBD<>(SB), X12
	MOVOU b64c51<>(SB), X13
	MOVOU b64c26<>(SB), X14
	MOVOU b64c13<>(SB), X6
	MOVOU b64offsets<>(SB), X7
loop:
	MOVOU (SI), X0
	PSHUFB X8, X0
	MOVO X0, X1
	PAND X9, X0
	PMULHUW X10, X0
	PAND X11, X1
	PMULLW X12, X1
	POR X1, X0     // X0: the 6-bit values, one a byte
	MOVO X0, X2
	PSUBUSB X13, X2 // 0 for 0-51, 1-12 for 52-63
	MOVO X14, X3
	PCMPGTB X0, X3  // 0xff for 0-25
	PAND X6, X3
	POR X3, X2      // the class
	MOVO X7, X4
	PSHUFB X2, X4   // the class's offset
	PADDB X4, X0
	MOVOU X0, (DI)
	ADDQ $12, SI
	ADDQ $16, DI
	DECQ CX
	JNZ loop
done:
	RET
