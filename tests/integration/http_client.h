// Minimal HTTP/1.0 GET on loopback for tests that read /metrics or Prometheus's HTTP API.
#pragma once

#include <string>

namespace spanserve::testing {

struct HttpResponse {
  int status = 0;  // 0: no connection or no status line
  std::string body;
};

// GET http://127.0.0.1:`port``target` (`target` = path + query, already URL-encoded).
HttpResponse HttpGet(int port, const std::string& target);
// Percent-encodes `s` for a query parameter value.
std::string UrlEncode(const std::string& s);
// A loopback port free at the time of asking (the caller binds it right after).
int FreePort();

}  // namespace spanserve::testing
