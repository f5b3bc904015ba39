/*
 * fiber_x86_64.S — context switch for the Metal emulator's lane fibers, x86-64 System V.
 *
 *   void trmtl_fiber_switch(void **save_sp, void *to_sp)
 *       pushes the callee-saved registers (rbp, rbx, r12-r15) and the MXCSR / x87 control words, stores the
 *       stack pointer in *save_sp, loads to_sp and pops the same frame from it.
 *   trmtl_fiber_start
 *       first "return address" of a new fiber: calls r12(r13) and traps if that ever returns.
 * The initial frame is built by trmtl_fiber_init (fiber.c).
 */
#if defined(__x86_64__)
    .text
    .globl  trmtl_fiber_switch
    .type   trmtl_fiber_switch, @function
    .p2align 4
trmtl_fiber_switch:
    .cfi_startproc
    pushq   %rbp
    pushq   %rbx
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    subq    $8, %rsp
    stmxcsr (%rsp)
    fnstcw  4(%rsp)
    movq    %rsp, (%rdi)
    movq    %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw   4(%rsp)
    addq    $8, %rsp
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbx
    popq    %rbp
    ret
    .cfi_endproc
    .size   trmtl_fiber_switch, .-trmtl_fiber_switch

    .globl  trmtl_fiber_start
    .type   trmtl_fiber_start, @function
    .p2align 4
trmtl_fiber_start:
    .cfi_startproc
    .cfi_undefined rip
    movq    %r13, %rdi
    callq   *%r12
    ud2
    .cfi_endproc
    .size   trmtl_fiber_start, .-trmtl_fiber_start
#endif
    .section .note.GNU-stack,"",%progbits
