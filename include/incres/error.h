// incres::Error, the one exception type of incres: its message is the single line the
// command line prints after "incres: error: ", naming the thing (file, field, tensor,
// flag), the expected and the actual value. Part of the installed API
// (<incres/incres.h>); inside the library every layer throws it (core/error.h).
#pragma once
#include <stdexcept>

// What the shared library libincres exports: everything else it holds is hidden.
#define INCRES_API __attribute__((visibility("default")))

namespace incres {

class INCRES_API Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace incres
