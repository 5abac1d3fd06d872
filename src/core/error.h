// incres::Error and the check macros every layer uses.
#pragma once
#include <sstream>
#include <string>

#include <incres/error.h>  // the class itself: part of the public API

namespace incres {

template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  throw Error(cat(parts...));
}

}  // namespace incres

// INCRES_CHECK(cond, "what", value, ...) throws incres::Error with the parts joined.
#define INCRES_CHECK(cond, ...)                 \
  do {                                          \
    if (!(cond)) ::incres::fail(__VA_ARGS__);   \
  } while (0)
