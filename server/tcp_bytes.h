// Bytes the process has read from a connected TCP socket, for the HTTP front's watcher
// (http_front.cc): how much of a request's headers a thread has taken in.
#pragma once

#include <cstdint>
#include <optional>

namespace spanserve::server {

// The bytes read so far from TCP socket `fd`: what the kernel has received in order
// (tcp_info's tcpi_bytes_received, Linux 4.1 and later) less what still waits unread in the
// socket. Nothing where the kernel does not say (another kind of socket, an older kernel).
std::optional<uint64_t> TcpBytesRead(int fd);

}  // namespace spanserve::server
