// The project's exception type and helpers that raise it with a formatted message.
#pragma once

#include <exception>
#include <string>

#include "kvrt/kvrt.h"

namespace kvrt {

// Thrown inside the library; the API layer turns it into a status and the
// thread-local message. Never crosses the C boundary.
class Error : public std::exception {
 public:
  Error(kvrt_status status, std::string message)
      : status_(status), message_(std::move(message)) {}
  kvrt_status status() const noexcept { return status_; }
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  kvrt_status status_;
  std::string message_;
};

// Throws Error(status, printf-style message).
[[noreturn]] void fail(kvrt_status status, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));

// printf into a std::string.
std::string strprintf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace kvrt
