// Overload{f, g, ...}: one callable from several lambdas, for std::visit over the IR's
// op variant (each lambda handles one op type).
#pragma once

namespace incres {

template <class... F>
struct Overload : F... {
  using F::operator()...;
};
template <class... F>
Overload(F...) -> Overload<F...>;

}  // namespace incres
