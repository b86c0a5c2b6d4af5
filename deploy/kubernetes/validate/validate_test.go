// Package validate checks the Kubernetes manifests in deploy/kubernetes
// against the Kubernetes API's own Go types, strictly: an unknown or
// misspelt field, a wrong type or a missing required part fails, as the API
// server's schema validation would. It is a module of its own so that the
// Kubernetes types stay out of gpuwarm's dependencies.
package validate

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

func docs(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, d := range bytes.Split(b, []byte("\n---\n")) {
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			out = append(out, d)
		}
	}
	return out
}

func stripComments(b []byte) []byte {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return []byte(strings.Join(out, "\n"))
}

func TestDaemonSet(t *testing.T) {
	var ds *appsv1.DaemonSet
	kinds := map[string]bool{}
	for _, d := range docs(t, "../daemonset.yaml") {
		var meta struct{ APIVersion, Kind string }
		if err := yaml.Unmarshal(d, &meta); err != nil {
			t.Fatal(err)
		}
		kinds[meta.Kind] = true
		var err error
		switch meta.Kind {
		case "Namespace":
			err = yaml.UnmarshalStrict(d, &corev1.Namespace{})
		case "ConfigMap":
			err = yaml.UnmarshalStrict(d, &corev1.ConfigMap{})
		case "DaemonSet":
			ds = &appsv1.DaemonSet{}
			err = yaml.UnmarshalStrict(d, ds)
			if meta.APIVersion != "apps/v1" {
				t.Errorf("DaemonSet apiVersion %q", meta.APIVersion)
			}
		default:
			t.Fatalf("unexpected kind %q", meta.Kind)
		}
		if err != nil {
			t.Fatalf("%s: %v", meta.Kind, err)
		}
	}
	if ds == nil || !kinds["ConfigMap"] || !kinds["Namespace"] {
		t.Fatalf("kinds %v", kinds)
	}
	// What makes it a working gpuwarm mount, beyond the schema.
	sel := ds.Spec.Selector.MatchLabels
	for k, v := range sel {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template", k, v)
		}
	}
	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("the mount needs a privileged container (FUSE, mount propagation)")
	}
	var metricsPort int32
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			metricsPort = p.ContainerPort
		}
	}
	ann := ds.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.Itoa(int(metricsPort)) || metricsPort == 0 {
		t.Errorf("scrape annotations %v do not name the metrics port %d", ann, metricsPort)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/healthz" {
		t.Error("readiness must come from /healthz")
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if !strings.HasSuffix(env["GPUWARM_METRICS_ADDR"], ":"+strconv.Itoa(int(metricsPort))) {
		t.Errorf("GPUWARM_METRICS_ADDR %q is not the metrics port", env["GPUWARM_METRICS_ADDR"])
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	if m, ok := mounts["/gpuwarm"]; !ok || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
		t.Error("/gpuwarm must be mounted with Bidirectional propagation, or pods never see the mount")
	}
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			t.Errorf("volume mount %s names no volume", m.Name)
			continue
		}
		if v.HostPath == nil {
			t.Errorf("volume %s is not a hostPath", m.Name)
		}
	}
	if v := vols["dev-fuse"]; v.HostPath == nil || v.HostPath.Path != "/dev/fuse" {
		t.Error("/dev/fuse is not given to the pod")
	}
	if v := vols["cache"]; v.HostPath == nil || mounts[v.HostPath.Path].MountPath == "" && !strings.HasPrefix(v.HostPath.Path, "/var/cache") {
		t.Error("the block cache must live on the node (hostPath)")
	}
}
