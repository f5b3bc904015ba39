/*
 * fiber_aarch64.S — context switch for the Metal emulator's lane fibers, AArch64 (AAPCS64).
 * UNTESTED: written for the same frame contract as fiber_x86_64.S but never run (the project's machines are
 * x86-64); TRELLIS_METAL_EMU_FIBER=ucontext or -DTRMTL_FIBER_UCONTEXT selects the portable fallback.
 *
 *   void trmtl_fiber_switch(void **save_sp, void *to_sp)
 *       saves x19-x30, d8-d15 and FPCR in a 176-byte frame, stores sp in *save_sp, switches to to_sp, restores.
 *   trmtl_fiber_start
 *       first return address of a new fiber: calls x19(x20) and traps if that ever returns.
 */
#if defined(__aarch64__)
    .text
    .globl  trmtl_fiber_switch
    .type   trmtl_fiber_switch, %function
    .p2align 4
trmtl_fiber_switch:
    sub     sp, sp, #176
    stp     x19, x20, [sp, #0]
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    stp     d8, d9, [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
    mrs     x9, fpcr
    str     x9, [sp, #160]
    mov     x9, sp
    str     x9, [x0]
    mov     sp, x1
    ldp     x19, x20, [sp, #0]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    ldp     d8, d9, [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    ldr     x9, [sp, #160]
    msr     fpcr, x9
    add     sp, sp, #176
    ret
    .size   trmtl_fiber_switch, .-trmtl_fiber_switch

    .globl  trmtl_fiber_start
    .type   trmtl_fiber_start, %function
    .p2align 4
trmtl_fiber_start:
    mov     x0, x20
    blr     x19
    brk     #0
    .size   trmtl_fiber_start, .-trmtl_fiber_start
#endif
#if defined(__linux__) || defined(__ELF__)
    .section .note.GNU-stack,"",%progbits
#endif
