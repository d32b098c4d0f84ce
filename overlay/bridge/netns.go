package bridge

import "github.com/shoal-project/shoal/overlay/netnsutil"

// enableIPForward sets net.ipv4.ip_forward=1 in the namespace at nsPath.
func enableIPForward(nsPath string) error {
	return netnsutil.SetSysctl(nsPath, "/proc/sys/net/ipv4/ip_forward", "1")
}

// enableRouteLocalnet sets net.ipv4.conf.<link>.route_localnet=1 in the
// namespace at nsPath.
func enableRouteLocalnet(nsPath, link string) error {
	return netnsutil.SetSysctl(nsPath, "/proc/sys/net/ipv4/conf/"+link+"/route_localnet", "1")
}
