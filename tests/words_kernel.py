"""A Triton kernel that only decodes words (mxfp4_words.decode_words), for the tests: a module
of its own because @triton.jit resolves names in its module, and the test module must import
without Triton."""

import triton
import triton.language as tl

from oss_convert.runtime.kernels.variants.mxfp4_words import decode_words


@triton.jit
def decode_kernel(words_ptr, scales_ptr, out_ptr, WORDS: tl.constexpr, WIDE_SCALES: tl.constexpr,
                  INTERPRETED: tl.constexpr):
    """out[8 WORDS] float32 = the values of WORDS words, with one scale per 4 words."""
    words = tl.load(words_ptr + tl.arange(0, WORDS)).to(tl.uint32, bitcast=True)
    scales = tl.load(scales_ptr + tl.arange(0, WORDS // 4)).to(tl.uint32)
    values = decode_words(tl.reshape(words, (WORDS // 4, 4)), scales[:, None], WIDE_SCALES, INTERPRETED)
    tl.store(out_ptr + tl.arange(0, WORDS * 8), tl.reshape(values, (WORDS * 8,)).to(tl.float32))
