// fragments.cuh: views of mma.sync m16n8k16 accumulator fragments (per-thread register layouts).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

namespace dmattn::sm80 {

using namespace cute;

// ((2,2),M,N) accumulator layout -> ((2,M),(2,N)): rows and columns of the thread's values.
template <class L>
__device__ __forceinline__ auto rows_cols(L l) {
  return make_layout(make_layout(get<1>(get<0>(l)), get<1>(l)), make_layout(get<0>(get<0>(l)), get<2>(l)));
}

// ((2,2),M,N) accumulator layout -> ((2,2,2),M,N/2): the A-operand layout of the next m16n8k16, so
// P feeds the P V product straight from registers.
template <class L>
__device__ __forceinline__ auto acc_as_a_operand(L l) {
  auto split = logical_divide(l, Shape<Underscore, Underscore, _2>{});
  return make_layout(make_layout(get<0>(split), get<2, 0>(split)), get<1>(split), get<2, 1>(split));
}

// A float register fragment converted to T with packed conversions (cvt.rn.bf16x2/f16x2.f32: one
// instruction per two values), in the same layout.
template <typename T, class Frag>
__device__ __forceinline__ auto convert_fragment(Frag const& f) {
  constexpr int kN = decltype(size(f))::value;
  cutlass::NumericArrayConverter<T, float, kN> convert;
  auto out = make_fragment_like<T>(f.layout());
  *reinterpret_cast<cutlass::Array<T, kN>*>(out.data()) =
      convert(*reinterpret_cast<const cutlass::Array<float, kN>*>(f.data()));
  return out;
}

}  // namespace dmattn::sm80
