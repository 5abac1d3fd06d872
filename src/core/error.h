// incres::Error and the check macros every layer uses.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace incres {

// The one exception type of the library. Its message is a single line that names
// the thing (file, field, tensor, flag), the expected and the actual value.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

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
