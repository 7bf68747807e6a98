package conf

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// Node is the node conf file (/etc/spinneret/node.yaml), overridden by
// SPINNERET_* environment variables.
type Node struct {
	// StateDir holds journals and the local IPAM store.
	StateDir string `mapstructure:"stateDir"`
	// LogFile is where the plugin logs (appended to by every plugin
	// process, 0600); empty or "stderr": standard error, which the runtime
	// drops for a call that failed.
	LogFile string `mapstructure:"logFile"`
	// LogMaxSizeMB is the size at which the log is rotated, keeping
	// LogMaxBackups rotated files beside it.
	LogMaxSizeMB  int `mapstructure:"logMaxSizeMB"`
	LogMaxBackups int `mapstructure:"logMaxBackups"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `mapstructure:"logLevel"`
	// Masters maps logical master names used in network configs to this
	// node's real interfaces. A name without a mapping is used as is.
	Masters map[string]string `mapstructure:"masters"`
	// AllowedMasters, when not empty, is the only set of real interfaces a
	// network may use as its master.
	AllowedMasters []string `mapstructure:"allowedMasters"`
	// NodeIPRaw lists the node's addresses pods reach through their veth;
	// empty: learned per pod from the node's routes. NodeIPs is it parsed.
	NodeIPRaw []string     `mapstructure:"nodeIPs"`
	NodeIPs   []netip.Addr `mapstructure:"-"`
	// Kubeconfig, when set, lets the plugin read the pod (its annotations,
	// when the runtime does not pass them) from the API server.
	Kubeconfig string `mapstructure:"kubeconfig"`
	// APITimeoutRaw bounds each API request ("5s"); APITimeout is it parsed.
	APITimeoutRaw string        `mapstructure:"apiTimeout"`
	APITimeout    time.Duration `mapstructure:"-"`
	// NodeName is this node's Kubernetes name (default: the host name).
	NodeName string `mapstructure:"nodeName"`
	// PoolCacheTTLRaw is how long the kubernetes IPAM backend reuses the
	// IPPool and ReservedIP lists it read ("5s"; "0s": read them on every
	// ADD). PoolCacheTTL is it parsed.
	PoolCacheTTLRaw string        `mapstructure:"poolCacheTTL"`
	PoolCacheTTL    time.Duration `mapstructure:"-"`
	// ControllerNamespace is where spinneret controller publishes the
	// cluster's CIDRs (default kube-system).
	ControllerNamespace string `mapstructure:"controllerNamespace"`
	// PodResourcesSocket is the kubelet's PodResources API, which says
	// which SR-IOV VFs a device plugin gave a pod.
	PodResourcesSocket string `mapstructure:"podResourcesSocket"`
}

// node conf keys with their environment variables; viper lower-cases keys.
var nodeKeys = map[string]string{
	"stateDir":            "SPINNERET_STATE_DIR",
	"logFile":             "SPINNERET_LOG_FILE",
	"logLevel":            "SPINNERET_LOG_LEVEL",
	"logMaxSizeMB":        "SPINNERET_LOG_MAX_SIZE_MB",
	"logMaxBackups":       "SPINNERET_LOG_MAX_BACKUPS",
	"masters":             "SPINNERET_MASTERS",
	"allowedMasters":      "SPINNERET_ALLOWED_MASTERS",
	"nodeIPs":             "SPINNERET_NODE_IPS",
	"kubeconfig":          "SPINNERET_KUBECONFIG",
	"apiTimeout":          "SPINNERET_API_TIMEOUT",
	"nodeName":            "SPINNERET_NODE_NAME",
	"poolCacheTTL":        "SPINNERET_POOL_CACHE_TTL",
	"controllerNamespace": "SPINNERET_CONTROLLER_NAMESPACE",
	"podResourcesSocket":  "SPINNERET_POD_RESOURCES_SOCKET",
}

// LoadNode reads the node conf. A missing file is an error only when
// required (the CNI config named it); otherwise the embedded defaults apply.
func LoadNode(path string, required bool) (*Node, error) {
	v := nodeViper()
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	if err := v.ReadInConfig(); err != nil {
		var pe *fs.PathError
		if !errors.As(err, &pe) || !errors.Is(err, fs.ErrNotExist) || required {
			return nil, fmt.Errorf("node conf %s: %w", path, err)
		}
	}
	known := map[string]string{}
	for k := range nodeKeys {
		known[strings.ToLower(k)] = k
	}
	keys := v.AllKeys()
	sort.Strings(keys)
	for _, k := range keys {
		top, _, _ := strings.Cut(k, ".")
		if _, ok := known[top]; !ok {
			return nil, fmt.Errorf("node conf %s: %s: unknown field (value %v)", path, k, v.Get(k))
		}
	}
	n := &Node{}
	if err := v.UnmarshalExact(n); err != nil {
		return nil, fmt.Errorf("node conf %s: %w", path, err)
	}
	if err := n.applyEnv(); err != nil {
		return nil, err
	}
	if err := n.validate(); err != nil {
		return nil, fmt.Errorf("node conf %s: %w", path, err)
	}
	return n, nil
}

// nodeDefaults are the node conf's values where neither the file nor the
// environment sets one.
var nodeDefaults = map[string]string{
	"stateDir":            "/var/lib/spinneret",
	"logFile":             DefaultLogFile,
	"logLevel":            "info",
	"logMaxSizeMB":        "10",
	"logMaxBackups":       "5",
	"apiTimeout":          "5s",
	"poolCacheTTL":        "5s",
	"controllerNamespace": "kube-system",
	"podResourcesSocket":  "/var/lib/kubelet/pod-resources/kubelet.sock",
}

// DefaultLogFile is the plugin's log where the node conf names none.
const DefaultLogFile = "/var/log/spinneret/spinneret.log"

// LogToStderr is the logFile value for standard error.
const LogToStderr = "stderr"

// LogStderr reports whether the plugin logs to standard error.
func (n *Node) LogStderr() bool { return n.LogFile == "" || n.LogFile == LogToStderr }

// logLevels are the values of logLevel.
var logLevels = []string{"debug", "info", "warn", "error"}

// nodeViper is a viper holding nodeDefaults.
func nodeViper() *viper.Viper {
	v := viper.New()
	for k, d := range nodeDefaults {
		v.SetDefault(k, d)
	}
	return v
}

// applyEnv lets SPINNERET_* variables override the file. Maps and lists use
// "a=b,c=d" and "a,b".
func (n *Node) applyEnv() error {
	for key, field := range map[string]*string{
		"stateDir": &n.StateDir, "logFile": &n.LogFile, "logLevel": &n.LogLevel, "kubeconfig": &n.Kubeconfig,
		"apiTimeout": &n.APITimeoutRaw, "nodeName": &n.NodeName, "poolCacheTTL": &n.PoolCacheTTLRaw,
		"controllerNamespace": &n.ControllerNamespace, "podResourcesSocket": &n.PodResourcesSocket,
	} {
		if s, ok := os.LookupEnv(nodeKeys[key]); ok {
			*field = s
		}
	}
	for key, field := range map[string]*int{"logMaxSizeMB": &n.LogMaxSizeMB, "logMaxBackups": &n.LogMaxBackups} {
		if s, ok := os.LookupEnv(nodeKeys[key]); ok {
			v, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil {
				return fmt.Errorf("%s: %q is not a whole number", nodeKeys[key], s)
			}
			*field = v
		}
	}
	if s, ok := os.LookupEnv(nodeKeys["masters"]); ok {
		n.Masters = map[string]string{}
		for _, kv := range splitList(s) {
			k, val, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("%s: %q is not name=interface", nodeKeys["masters"], kv)
			}
			n.Masters[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(val)
		}
	}
	if s, ok := os.LookupEnv(nodeKeys["allowedMasters"]); ok {
		n.AllowedMasters = splitList(s)
	}
	if s, ok := os.LookupEnv(nodeKeys["nodeIPs"]); ok {
		n.NodeIPRaw = splitList(s)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func (n *Node) validate() error {
	if !filepath.IsAbs(n.StateDir) {
		return fmt.Errorf("stateDir: %q is not an absolute path", n.StateDir)
	}
	if !n.LogStderr() && !filepath.IsAbs(n.LogFile) {
		return fmt.Errorf("logFile: %q is neither an absolute path nor %q", n.LogFile, LogToStderr)
	}
	if n.LogMaxSizeMB < 1 || n.LogMaxSizeMB > 1024 {
		return fmt.Errorf("logMaxSizeMB: %d is not between 1 and 1024", n.LogMaxSizeMB)
	}
	if n.LogMaxBackups < 1 || n.LogMaxBackups > 100 {
		return fmt.Errorf("logMaxBackups: %d is not between 1 and 100", n.LogMaxBackups)
	}
	if !slices.Contains(logLevels, n.LogLevel) {
		return fmt.Errorf("logLevel: %q is not one of debug, info, warn, error", n.LogLevel)
	}
	for k, m := range n.Masters {
		if !ValidIfName(m) {
			return fmt.Errorf("masters.%s: %q is not a valid interface name", k, m)
		}
	}
	if n.Kubeconfig != "" && !filepath.IsAbs(n.Kubeconfig) {
		return fmt.Errorf("kubeconfig: %q is not an absolute path", n.Kubeconfig)
	}
	d, err := time.ParseDuration(n.APITimeoutRaw)
	if err != nil || d <= 0 || d > time.Minute {
		return fmt.Errorf("apiTimeout: %q is not a duration between 0 and 1m", n.APITimeoutRaw)
	}
	n.APITimeout = d
	if d, err = time.ParseDuration(n.PoolCacheTTLRaw); err != nil || d < 0 || d > time.Hour {
		return fmt.Errorf("poolCacheTTL: %q is not a duration between 0 and 1h", n.PoolCacheTTLRaw)
	}
	n.PoolCacheTTL = d
	if n.NodeName == "" {
		// the host name, if it can name a node; only the kubernetes IPAM
		// backend needs one, and says so if it is missing
		if h, err := os.Hostname(); err == nil && ValidObjectName(strings.ToLower(h)) {
			n.NodeName = strings.ToLower(h)
		}
	} else if !ValidObjectName(n.NodeName) {
		return fmt.Errorf("nodeName: %q is not a valid node name", n.NodeName)
	}
	for i, s := range n.NodeIPRaw {
		a, err := netip.ParseAddr(s)
		if err != nil || a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("nodeIPs[%d]: %q is not a unicast address", i, s)
		}
		n.NodeIPs = append(n.NodeIPs, a)
	}
	SortIPv4First(n.NodeIPs)
	for i, m := range n.AllowedMasters {
		if !ValidIfName(m) {
			return fmt.Errorf("allowedMasters[%d]: %q is not a valid interface name", i, m)
		}
	}
	return nil
}

// SortIPv4First orders addresses IPv4 first, keeping the order within a family.
func SortIPv4First(ips []netip.Addr) {
	slices.SortStableFunc(ips, func(a, b netip.Addr) int {
		switch {
		case a.Is4() == b.Is4():
			return 0
		case a.Is4():
			return -1
		}
		return 1
	})
}

// ResolveMaster maps a network's logical master to this node's interface and
// checks it against the allow-list.
func (n *Node) ResolveMaster(logical string) (string, error) {
	real := logical
	if m, ok := n.Masters[strings.ToLower(logical)]; ok {
		real = m
	}
	if len(n.AllowedMasters) > 0 && !slices.Contains(n.AllowedMasters, real) {
		return "", fmt.Errorf("master: %q (interface %s) is not in the node's allowedMasters %v", logical, real, n.AllowedMasters)
	}
	return real, nil
}

// LoadNodeForDel is LoadNode for a DEL, which must converge: a node conf
// that no longer parses (a typo made after the pod's ADD) still gives the
// state dir, where the journals are, the log file and level and the
// kubeconfig, each when its own value is readable; everything else takes
// its default. known is
// false when the state dir could not be read from a file that names one:
// the default may not be where the journals are.
func LoadNodeForDel(path string, required bool) (n *Node, known bool, err error) {
	if n, err = LoadNode(path, required); err == nil {
		return n, true, nil
	}
	n = &Node{}
	if uerr := nodeViper().Unmarshal(n); uerr != nil {
		return nil, false, err
	}
	known = true
	var raw map[string]any
	if b, rerr := os.ReadFile(path); rerr == nil && yaml.Unmarshal(b, &raw) != nil {
		// not YAML at all: whether it names a state dir is unknown
		known = !strings.Contains(string(b), "stateDir")
	}
	str := func(key string) (string, bool) { s, ok := raw[key].(string); return s, ok }
	if s, ok := str("stateDir"); ok && filepath.IsAbs(s) {
		n.StateDir = s
	} else if _, named := raw["stateDir"]; named {
		known = false
	}
	if s, ok := os.LookupEnv(nodeKeys["stateDir"]); ok && filepath.IsAbs(s) {
		n.StateDir, known = s, true
	}
	if s, ok := str("logFile"); ok && (filepath.IsAbs(s) || s == "" || s == LogToStderr) {
		n.LogFile = s
	}
	if s, ok := str("kubeconfig"); ok && filepath.IsAbs(s) {
		n.Kubeconfig = s // to release kubernetes IPAM allocations
	}
	if s, ok := str("logLevel"); ok && slices.Contains(logLevels, s) {
		n.LogLevel = s
	}
	if verr := n.validate(); verr != nil { // only readable values were taken: cannot fail
		return nil, false, err
	}
	return n, known, err
}
