// Kept out of unity builds: <linux/tcp.h> (whose tcp_info has tcpi_bytes_received) and glibc's
// <netinet/tcp.h>, which cpp-httplib includes, define the same structures.
#include "server/tcp_bytes.h"

#include <linux/in.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <cstddef>

namespace spanserve::server {

std::optional<uint64_t> TcpBytesRead(int fd) {
  tcp_info info{};
  socklen_t len = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0 ||
      len < offsetof(tcp_info, tcpi_bytes_received) + sizeof(info.tcpi_bytes_received)) {
    return std::nullopt;
  }
  int unread = 0;
  if (ioctl(fd, SIOCINQ, &unread) != 0 || unread < 0) return std::nullopt;
  const uint64_t received = info.tcpi_bytes_received;
  return received >= static_cast<uint64_t>(unread) ? received - static_cast<uint64_t>(unread) : 0;
}

}  // namespace spanserve::server
