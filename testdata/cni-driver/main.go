// Command cni-driver is the test runtime for our CNI plugins: a cnitool-compatible
// front end over libcni 1.1.2 (Debian golang-github-appc-cni-dev), plus GC and
// STATUS, which libcni 1.1.2 does not have and which we implement here with the
// semantics of libcni v1.2 (GCNetworkList / GetStatusNetworkList).
//
// Usage:
//
//	cni-driver add|check|del <network-name> <netns-path>
//	cni-driver gc <network-name> [<netns-path>...]
//	cni-driver status <network-name>
//	cni-driver version <plugin-type>
//
// Environment (as cnitool): NETCONFPATH (default /etc/cni/net.d), CNI_PATH,
// CAP_ARGS (JSON object), CNI_ARGS ("K=V;K=V"), CNI_IFNAME (default eth0).
// Extensions: CNI_CONTAINERID overrides the container ID derived from the netns
// path; CNI_CACHE_DIR selects the libcni cache dir (default /var/lib/cni).
//
// Exit status: 0 success, 1 error (text on stderr; a plugin's CNI error object
// is also printed as JSON on stdout), 2 usage error.
//
// Build (offline, GOPATH mode): scripts/build-cni-driver.
package main

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

const (
	// libcni 1.1.2 can only parse and convert results up to spec 1.0.0, so
	// add/check/del (which go through libcni) must not use anything newer.
	libcniMaxVersion = "1.0.0"
	// gc and status never parse a result, so the driver itself speaks 1.1.0.
	driverMaxVersion = "1.1.0"
	// First spec version with the GC and STATUS verbs.
	gcStatusMinVersion = "1.1.0"

	defaultNetConfPath = "/etc/cni/net.d"
	defaultIfName      = "eth0"
)

const usageText = `usage:
  cni-driver add|check|del <network-name> <netns-path>
  cni-driver gc <network-name> [<netns-path>...]
  cni-driver status <network-name>
  cni-driver version <plugin-type>

environment: NETCONFPATH, CNI_PATH, CAP_ARGS, CNI_ARGS, CNI_IFNAME,
             CNI_CONTAINERID (overrides the derived ID), CNI_CACHE_DIR
`

// usageError makes main exit with status 2 instead of 1.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// multiError collects the independent failures of a GC run, which (like
// libcni v1.2) keeps going after an error.
type multiError struct{ errs []error }

func (m *multiError) Error() string {
	texts := make([]string, len(m.errs))
	for i, err := range m.errs {
		texts[i] = err.Error()
	}
	return strings.Join(texts, "\n")
}

func main() {
	args := os.Args[1:]
	var err error
	switch {
	case len(args) == 3 && (args[0] == "add" || args[0] == "check" || args[0] == "del"):
		err = cmdLifecycle(args[0], args[1], args[2])
	case len(args) >= 2 && args[0] == "gc":
		err = cmdGC(args[1], args[2:])
	case len(args) == 2 && args[0] == "status":
		err = cmdStatus(args[1])
	case len(args) == 2 && args[0] == "version":
		err = cmdVersion(args[1])
	default:
		err = &usageError{}
	}
	if err != nil {
		fail(err)
	}
}

// fail prints err and exits. A CNI error object from a plugin is echoed as JSON
// on stdout so that tests can assert on its code rather than on message text.
func fail(err error) {
	var uerr *usageError
	if errors.As(err, &uerr) {
		if uerr.msg != "" {
			fmt.Fprintf(os.Stderr, "cni-driver: %s\n", uerr.msg)
		}
		fmt.Fprint(os.Stderr, usageText)
		os.Exit(2)
	}

	errs := []error{err}
	var merr *multiError
	if errors.As(err, &merr) {
		errs = merr.errs
	}
	for _, e := range errs {
		fmt.Fprintln(os.Stderr, e)
	}
	for _, e := range errs {
		var cniErr *types.Error
		if errors.As(e, &cniErr) {
			if out, jerr := json.Marshal(cniErr); jerr == nil {
				fmt.Println(string(out))
			}
			break
		}
	}
	os.Exit(1)
}

// ---- environment -----------------------------------------------------------

func cniPath() []string { return filepath.SplitList(os.Getenv("CNI_PATH")) }

func ifName() string {
	if v := os.Getenv("CNI_IFNAME"); v != "" {
		return v
	}
	return defaultIfName
}

// newCNI returns a libcni handle; an empty CNI_CACHE_DIR means libcni's default.
func newCNI() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(cniPath(), os.Getenv("CNI_CACHE_DIR"), nil)
}

func cacheDir() string {
	if d := os.Getenv("CNI_CACHE_DIR"); d != "" {
		return d
	}
	return libcni.CacheDir
}

// containerID derives the ID exactly like cnitool, so that cnitool and the
// driver agree on cache file names and IPAM ownership for the same netns.
func containerID(absNetns string) string {
	sum := sha512.Sum512([]byte(absNetns))
	return fmt.Sprintf("cnitool-%x", sum[:10])
}

// parseCNIArgs parses "K=V;K=V" as strictly as cnitool: every pair needs a
// non-empty key and value and exactly one '='.
func parseCNIArgs(s string) ([][2]string, error) {
	if s == "" {
		return nil, nil
	}
	var out [][2]string
	for _, pair := range strings.Split(s, ";") {
		kv := strings.Split(pair, "=")
		if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
			return nil, fmt.Errorf("invalid CNI_ARGS pair %q", pair)
		}
		out = append(out, [2]string{kv[0], kv[1]})
	}
	return out, nil
}

func runtimeConf(netnsArg string) (*libcni.RuntimeConf, error) {
	netns, err := filepath.Abs(netnsArg)
	if err != nil {
		return nil, fmt.Errorf("netns path %q: %w", netnsArg, err)
	}
	rt := &libcni.RuntimeConf{
		ContainerID: containerID(netns),
		NetNS:       netns,
		IfName:      ifName(),
	}
	if id := os.Getenv("CNI_CONTAINERID"); id != "" {
		rt.ContainerID = id
	}
	if rt.Args, err = parseCNIArgs(os.Getenv("CNI_ARGS")); err != nil {
		return nil, err
	}
	if capArgs := os.Getenv("CAP_ARGS"); capArgs != "" {
		if err := json.Unmarshal([]byte(capArgs), &rt.CapabilityArgs); err != nil {
			return nil, fmt.Errorf("parsing CAP_ARGS: %w", err)
		}
	}
	return rt, nil
}

// ---- configuration and version selection ------------------------------------

// decodeRaw parses JSON keeping numbers as json.Number, so that re-encoding a
// rewritten conflist does not turn large integers into floats.
func decodeRaw(data []byte) (map[string]interface{}, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	raw := map[string]interface{}{}
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("error parsing configuration list: %w", err)
	}
	return raw, nil
}

func compareVersions(a, b string) (int, error) {
	a1, a2, a3, err := version.ParseVersion(a)
	if err != nil {
		return 0, err
	}
	b1, b2, b3, err := version.ParseVersion(b)
	if err != nil {
		return 0, err
	}
	for _, d := range [][2]int{{a1, b1}, {a2, b2}, {a3, b3}} {
		if d[0] != d[1] {
			if d[0] < d[1] {
				return -1, nil
			}
			return 1, nil
		}
	}
	return 0, nil
}

func versionAtLeast(v, min string) bool {
	c, err := compareVersions(v, min)
	return err == nil && c >= 0
}

// selectVersion applies the CNI 1.1 rule: use the highest version in
// {cniVersion} ∪ cniVersions that the caller supports (<= max). It returns ""
// when the list declares no version at all (left to libcni, which treats that
// as 0.1.0).
func selectVersion(raw map[string]interface{}, max string) (string, error) {
	var candidates []string
	if v, ok := raw["cniVersion"]; ok {
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("error parsing configuration list: invalid cniVersion type %T", v)
		}
		if s != "" {
			candidates = append(candidates, s)
		}
	}
	if vs, ok := raw["cniVersions"]; ok {
		list, ok := vs.([]interface{})
		if !ok {
			return "", fmt.Errorf("error parsing configuration list: invalid cniVersions type %T", vs)
		}
		for i, v := range list {
			s, ok := v.(string)
			if !ok {
				return "", fmt.Errorf("error parsing configuration list: invalid cniVersions[%d] type %T", i, v)
			}
			candidates = append(candidates, s)
		}
	}
	if len(candidates) == 0 {
		return "", nil
	}
	best := ""
	for _, c := range candidates {
		cmpMax, err := compareVersions(c, max)
		if err != nil {
			return "", fmt.Errorf("error parsing configuration list: invalid version %q: %w", c, err)
		}
		if cmpMax > 0 {
			continue
		}
		if best == "" {
			best = c
		} else if cmpBest, _ := compareVersions(c, best); cmpBest > 0 {
			best = c
		}
	}
	if best == "" {
		return "", fmt.Errorf("network configuration offers CNI versions %v but this operation supports at most %s",
			candidates, max)
	}
	return best, nil
}

// negotiate returns list with its cniVersion set to the version selected for
// a verb that supports up to max. The list is only rebuilt when the version
// changes, so libcni caches the original bytes otherwise.
func negotiate(list *libcni.NetworkConfigList, max string) (*libcni.NetworkConfigList, map[string]interface{}, error) {
	raw, err := decodeRaw(list.Bytes)
	if err != nil {
		return nil, nil, err
	}
	chosen, err := selectVersion(raw, max)
	if err != nil {
		return nil, nil, fmt.Errorf("network %q: %w", list.Name, err)
	}
	if chosen == "" || chosen == list.CNIVersion {
		return list, raw, nil
	}
	raw["cniVersion"] = chosen
	data, err := json.Marshal(raw)
	if err != nil {
		return nil, nil, err
	}
	newList, err := libcni.ConfListFromBytes(data)
	if err != nil {
		return nil, nil, err
	}
	return newList, raw, nil
}

func loadList(name, max string) (*libcni.NetworkConfigList, map[string]interface{}, error) {
	dir := os.Getenv("NETCONFPATH")
	if dir == "" {
		dir = defaultNetConfPath
	}
	// LoadConfList also finds single-plugin .conf/.json files and up-converts them.
	list, err := libcni.LoadConfList(dir, name)
	if err != nil {
		return nil, nil, err
	}
	return negotiate(list, max)
}

// ---- add / check / del ---------------------------------------------------------

func cmdLifecycle(verb, netName, netnsArg string) error {
	list, _, err := loadList(netName, libcniMaxVersion)
	if err != nil {
		return err
	}
	rt, err := runtimeConf(netnsArg)
	if err != nil {
		return err
	}
	cni := newCNI()
	ctx := context.Background()
	switch verb {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		// The last plugin normally answers in the list's version already; make
		// sure of it, as a runtime would store and hand on that version.
		if list.CNIVersion != "" {
			if result, err = result.GetAsVersion(list.CNIVersion); err != nil {
				return fmt.Errorf("converting result to %s: %w", list.CNIVersion, err)
			}
		}
		out, err := json.Marshal(result)
		if err != nil {
			return err
		}
		fmt.Println(string(out))
		return nil
	case "check":
		return cni.CheckNetworkList(ctx, list, rt)
	default:
		return cni.DelNetworkList(ctx, list, rt)
	}
}

// ---- gc / status (libcni v1.2 semantics, built on pkg/invoke) -----------------

type attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// cacheEntry is the libcni cniCacheV1 file layout (config is base64 in JSON,
// which encoding/json decodes into []byte for us).
type cacheEntry struct {
	Kind           string                 `json:"kind"`
	ContainerID    string                 `json:"containerId"`
	IfName         string                 `json:"ifName"`
	NetworkName    string                 `json:"networkName"`
	NetNS          string                 `json:"netns"` // only written by libcni >= 1.2
	Config         []byte                 `json:"config"`
	CniArgs        [][2]string            `json:"cniArgs"`
	CapabilityArgs map[string]interface{} `json:"capabilityArgs"`
}

// cachedAttachments returns the cache entries of network netName.
func cachedAttachments(netName string) ([]cacheEntry, error) {
	dir := filepath.Join(cacheDir(), "results")
	files, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var out []cacheEntry
	for _, f := range files {
		// The file name is only a cheap pre-filter ("a-" also matches network
		// "a-b"); the networkName field inside is authoritative.
		if f.IsDir() || !strings.HasPrefix(f.Name(), netName+"-") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, f.Name()))
		if err != nil {
			continue
		}
		var e cacheEntry
		if json.Unmarshal(data, &e) != nil || e.Kind != libcni.CNICacheV1 || e.NetworkName != netName {
			continue
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ContainerID != out[j].ContainerID {
			return out[i].ContainerID < out[j].ContainerID
		}
		return out[i].IfName < out[j].IfName
	})
	return out, nil
}

// validAttachments turns the gc arguments into (containerID, ifname) pairs.
func validAttachments(netnsArgs []string) ([]attachment, error) {
	ifname := ifName()
	valid := make([]attachment, 0, len(netnsArgs)) // non-nil: marshals as []
	if id := os.Getenv("CNI_CONTAINERID"); id != "" {
		if len(netnsArgs) > 1 {
			return nil, &usageError{"CNI_CONTAINERID names a single attachment; pass at most one netns path"}
		}
		return append(valid, attachment{id, ifname}), nil
	}
	for _, p := range netnsArgs {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("netns path %q: %w", p, err)
		}
		valid = append(valid, attachment{containerID(abs), ifname})
	}
	return valid, nil
}

// pluginStdin builds a GC/STATUS stdin the way libcni builds any plugin's:
// the plugin object with the list's name and version injected, but no
// prevResult and no runtimeConfig.
func pluginStdin(list *libcni.NetworkConfigList, plugin *libcni.NetworkConfig, extra map[string]interface{}) ([]byte, error) {
	inject := map[string]interface{}{"name": list.Name, "cniVersion": list.CNIVersion}
	for k, v := range extra {
		inject[k] = v
	}
	conf, err := libcni.InjectConf(plugin, inject)
	if err != nil {
		return nil, err
	}
	return conf.Bytes, nil
}

func execPlugin(ctx context.Context, command string, plugin *libcni.NetworkConfig, stdin []byte) error {
	path, err := invoke.FindInPath(plugin.Network.Type, cniPath())
	if err != nil {
		return err
	}
	args := &invoke.Args{
		Command: command,
		Path:    strings.Join(cniPath(), string(os.PathListSeparator)),
	}
	return invoke.ExecPluginWithoutResult(ctx, path, stdin, args, nil)
}

func disableGC(raw map[string]interface{}) (bool, error) {
	switch v := raw["disableGC"].(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	case string: // libcni v1.2 accepts the string forms for disableCheck; be as lenient
		switch strings.ToLower(v) {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
	}
	return false, fmt.Errorf("error parsing configuration list: invalid disableGC value %v", raw["disableGC"])
}

// staleList picks the configuration to DEL a stale attachment with: the
// cached list bytes (what it was added with), falling back to the current list.
func staleList(e cacheEntry, current *libcni.NetworkConfigList) (*libcni.NetworkConfigList, error) {
	list := current
	if len(e.Config) > 0 {
		cached, err := libcni.ConfListFromBytes(e.Config)
		if err != nil {
			return nil, fmt.Errorf("cached config: %w", err)
		}
		list = cached
	}
	// DEL goes through libcni, so it must use a version libcni understands.
	list, _, err := negotiate(list, libcniMaxVersion)
	return list, err
}

func cmdGC(netName string, netnsArgs []string) error {
	valid, err := validAttachments(netnsArgs)
	if err != nil {
		return err
	}
	list, raw, err := loadList(netName, driverMaxVersion)
	if err != nil {
		return err
	}
	if off, err := disableGC(raw); err != nil {
		return err
	} else if off {
		return nil
	}

	ctx := context.Background()
	var errs []error

	// (1) DEL every cached attachment of this network that is not valid.
	isValid := map[attachment]bool{}
	for _, a := range valid {
		isValid[a] = true
	}
	entries, err := cachedAttachments(list.Name)
	if err != nil {
		errs = append(errs, fmt.Errorf("reading cache: %w", err))
	}
	cni := newCNI()
	for _, e := range entries {
		if isValid[attachment{e.ContainerID, e.IfName}] {
			continue
		}
		delList, err := staleList(e, list)
		if err == nil {
			rt := &libcni.RuntimeConf{
				ContainerID:    e.ContainerID,
				NetNS:          e.NetNS, // empty with libcni 1.1.2 caches: allowed for DEL
				IfName:         e.IfName,
				Args:           e.CniArgs,
				CapabilityArgs: e.CapabilityArgs,
			}
			err = cni.DelNetworkList(ctx, delList, rt)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("failed to delete stale attachment %s %s: %w", e.ContainerID, e.IfName, err))
		}
	}

	// (2) GC verb on every plugin, if the list speaks 1.1.0. Both keys are sent:
	// the spec-v1.1.0 text says cni.dev/attachments, later text (cni#1101)
	// cni.dev/valid-attachments, and libcni v1.2 sends both.
	if versionAtLeast(list.CNIVersion, gcStatusMinVersion) {
		extra := map[string]interface{}{
			"cni.dev/valid-attachments": valid,
			"cni.dev/attachments":       valid,
		}
		for _, plugin := range list.Plugins {
			stdin, err := pluginStdin(list, plugin, extra)
			if err == nil {
				err = execPlugin(ctx, "GC", plugin, stdin)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("failed to GC plugin %s: %w", plugin.Network.Type, err))
			}
		}
	}

	if len(errs) > 0 {
		return &multiError{errs}
	}
	return nil
}

func cmdStatus(netName string) error {
	list, _, err := loadList(netName, driverMaxVersion)
	if err != nil {
		return err
	}
	// Like libcni v1.2: lists older than 1.1.0 have no STATUS; report success.
	if !versionAtLeast(list.CNIVersion, gcStatusMinVersion) {
		return nil
	}
	ctx := context.Background()
	for _, plugin := range list.Plugins {
		stdin, err := pluginStdin(list, plugin, nil)
		if err == nil {
			err = execPlugin(ctx, "STATUS", plugin, stdin)
		}
		if err != nil {
			return fmt.Errorf("plugin type=%q name=%q status failed: %w", plugin.Network.Type, plugin.Network.Name, err)
		}
	}
	return nil
}

// ---- version ---------------------------------------------------------------------

func cmdVersion(pluginType string) error {
	info, err := newCNI().GetVersionInfo(context.Background(), pluginType)
	if err != nil {
		return err
	}
	out, err := json.Marshal(map[string]interface{}{
		// libcni's GetVersionInfo always sends its own version on stdin.
		"cniVersion":        version.Current(),
		"supportedVersions": info.SupportedVersions(),
	})
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}
