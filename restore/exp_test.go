package restore

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	criu "github.com/checkpoint-restore/go-criu/v8"
	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"google.golang.org/protobuf/proto"
)

func TestExperiment(t *testing.T) {
	os.Setenv("CRIU_FAULT", "130")
	c, err := FindCRIU(context.Background())
	if err != nil {
		t.Skip(err)
	}
	bin, _ := filepath.Abs("../bin/gpuwarm-workload")
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	cmd, err := Run(RunOptions{Args: []string{bin, "--mb", "32"}, Stdin: inR, Stdout: outW, Stderr: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	inR.Close()
	outW.Close()
	rd := bufio.NewReader(outR)
	line, _ := rd.ReadString('\n')
	t.Logf("started: %s", line)
	link0, _ := os.Readlink("/proc/" + itoa(cmd.Process.Pid) + "/fd/0")
	link1, _ := os.Readlink("/proc/" + itoa(cmd.Process.Pid) + "/fd/1")
	t.Logf("fds: %s %s", link0, link1)
	dir := t.TempDir()
	d, _ := os.Open(dir)
	cr := criu.MakeCriu()
	cr.SetCriuPath(c.Path)
	start := time.Now()
	err = cr.Dump(&rpc.CriuOpts{
		ImagesDirFd: proto.Int32(int32(d.Fd())), Pid: proto.Int32(int32(cmd.Process.Pid)),
		LogLevel: proto.Int32(4), LogFile: proto.String("dump.log"),
		ManageCgroupsMode: rpc.CriuCgMode_IGNORE.Enum(),
	}, nil)
	t.Logf("dump: %v in %v", err, time.Since(start))
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "dump.log"))
		t.Fatalf("%s", lastLines(string(b), 20))
	}
	cmd.Wait()
	out, _ := exec.Command("ls", "-la", dir).CombinedOutput()
	t.Logf("%s", out)

	// Restore with new pipes.
	inR2, inW2, _ := os.Pipe()
	outR2, outW2, _ := os.Pipe()
	cr2 := criu.MakeCriu()
	cr2.SetCriuPath(c.Path)
	cr2.AddInheritFd(strings.TrimSuffix(strings.TrimPrefix(link0, ""), ""), inR2)
	cr2.AddInheritFd(link1, outW2)
	start = time.Now()
	err = cr2.Restore(&rpc.CriuOpts{
		ImagesDirFd: proto.Int32(int32(d.Fd())), LogLevel: proto.Int32(4), LogFile: proto.String("restore.log"),
		RstSibling: proto.Bool(true), ManageCgroupsMode: rpc.CriuCgMode_IGNORE.Enum(),
	}, nil)
	t.Logf("restore: %v in %v", err, time.Since(start))
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "restore.log"))
		t.Fatalf("%s", lastLines(string(b), 20))
	}
	inR2.Close()
	outW2.Close()
	inW2.Write([]byte("checksum\n"))
	rd2 := bufio.NewReader(outR2)
	line2, err := rd2.ReadString('\n')
	t.Logf("restored answers %q %v (want %s)", line2, err, line)
	inW2.Write([]byte("exit\n"))
	inW.Close()
}

func itoa(i int) string { return fmt.Sprint(i) }
