package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/spf13/cobra"
)

// loadChunkSize is the size of the pieces `image load` streams an archive
// in: large enough that per-message overhead vanishes, well under gRPC's
// default 4 MiB message limit.
const loadChunkSize = 1 << 20

func newImageCmd(a *app) *cobra.Command {
	return newGroupCmd("image", "Manage this host's images",
		`Load, pull and list the images in this host's image store. Tasks find
their image there first, so images loaded on every host let a cluster run
without a registry.`,
		newImageLoadCmd(a), newImagePullCmd(a), newImageLsCmd(a))
}

func newImageLoadCmd(a *app) *cobra.Command {
	var input string
	c := &cobra.Command{
		Use:   "load [-i FILE]",
		Short: "Load images from an OCI layout or docker-save archive",
		Long: `Load the images of a tar archive (an OCI image layout, or what 'docker save'
writes) into this host's image store, from -i FILE or from stdin.`,
		Example: `  shoal image load -i web.tar
  shoal image load < web.tar
  docker save busybox | shoal image load`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var r io.Reader = a.stdin
			name := "stdin"
			if input != "" {
				f, err := os.Open(input)
				if err != nil {
					return fmt.Errorf("load images: %w", err)
				}
				defer f.Close()
				r, name = f, input
			} else if f, ok := a.stdin.(*os.File); a.stdin == nil || ok && isTerminal(f) {
				return usageErrorf("no archive: give -i FILE or redirect one to stdin")
			}
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			stream, err := d.local.LoadImage(ctx)
			if err != nil {
				return fmt.Errorf("load images: %w", err)
			}
			buf := make([]byte, loadChunkSize)
			for {
				n, rerr := io.ReadFull(r, buf)
				if n > 0 {
					if err := stream.Send(&shoalpb.LoadImageRequest{Chunk: buf[:n]}); err != nil {
						if isEOF(err) {
							// The daemon stopped reading: CloseAndRecv
							// returns its reason.
							break
						}
						return fmt.Errorf("load images: send %s: %w", name, err)
					}
				}
				if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
					break
				}
				if rerr != nil {
					return fmt.Errorf("load images: read %s: %w", name, rerr)
				}
			}
			resp, err := stream.CloseAndRecv()
			if err != nil {
				return fmt.Errorf("load images from %s: %w", name, err)
			}
			for _, img := range resp.GetImages() {
				if len(img.GetRefs()) == 0 {
					fmt.Fprintf(a.stdout, "Loaded image ID: %s\n", img.GetDigest())
				}
				for _, ref := range img.GetRefs() {
					fmt.Fprintf(a.stdout, "Loaded image: %s\n", ref)
				}
			}
			return nil
		},
	}
	c.Flags().StringVarP(&input, "input", "i", "", "archive to read instead of stdin")
	return c
}

func newImagePullCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "pull REF",
		Short: "Pull an image from a registry into this host's store",
		Long: `Pull an image from its registry into this host's image store, printing
progress. Tasks pull their image themselves when it is missing; pulling
ahead of time only makes them start faster.`,
		Example: `  shoal image pull busybox:latest
  shoal image pull registry.local:5000/shoal/web:1.2`,
		Args: exactArgs(1, "REF"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			stream, err := d.local.PullImage(ctx, &shoalpb.PullImageRequest{Ref: args[0]})
			if err != nil {
				return fmt.Errorf("pull %s: %w", args[0], err)
			}
			for {
				p, err := stream.Recv()
				if isEOF(err) {
					return nil
				}
				if err != nil {
					return err
				}
				if p.GetMessage() != "" {
					fmt.Fprintln(a.stdout, p.GetMessage())
				}
				if img := p.GetImage(); img != nil {
					fmt.Fprintf(a.stdout, "Pulled %s (%s)\n", args[0], img.GetDigest())
				}
			}
		},
	}
}

func newImageLsCmd(a *app) *cobra.Command {
	var (
		format string
		quiet  bool
	)
	c := &cobra.Command{
		Use:     "ls [flags]",
		Aliases: []string{"list"},
		Short:   "List this host's images",
		Long: `List the images in this host's store, one line per reference. DIGEST is the
manifest digest, shortened; -q prints the full digests.`,
		Example: `  shoal image ls
  shoal image ls --format json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			d, err := a.daemonFor(ctx, format)
			if err != nil {
				return err
			}
			resp, err := d.local.ListImages(ctx, &shoalpb.ListImagesRequest{})
			if err != nil {
				return fmt.Errorf("list images: %w", err)
			}
			imgs := resp.GetImages()
			switch {
			case quiet:
				for _, img := range imgs {
					fmt.Fprintln(a.stdout, img.GetDigest())
				}
				return nil
			case format == formatJSON:
				return writeJSONArray(a.stdout, imgs)
			}
			return writeImageTable(a.stdout, imgs, time.Now())
		},
	}
	c.Flags().StringVar(&format, "format", formatTable, "output format: table or json")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "only print image digests")
	return c
}

// writeImageTable lists images one row per reference, sorted by reference;
// an image without one shows as "<none>".
func writeImageTable(out io.Writer, imgs []*shoalpb.ImageSummary, now time.Time) error {
	type imgRow struct {
		ref string
		img *shoalpb.ImageSummary
	}
	var rows []imgRow
	for _, img := range imgs {
		if len(img.GetRefs()) == 0 {
			rows = append(rows, imgRow{"<none>", img})
		}
		for _, ref := range img.GetRefs() {
			rows = append(rows, imgRow{ref, img})
		}
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].ref < rows[j].ref })
	w := newTable(out)
	row(w, "REPOSITORY:TAG", "DIGEST", "SIZE", "CREATED")
	for _, r := range rows {
		created := "N/A"
		if r.img.GetCreatedAt() != nil {
			created = ago(r.img.GetCreatedAt().AsTime(), now)
		}
		row(w, r.ref, shortDigest(r.img.GetDigest()), humanSize(r.img.GetSize()), created)
	}
	return w.Flush()
}

// shortDigest is the first shortIDLen hex digits of a "sha256:..." digest.
func shortDigest(d string) string {
	if _, hex, ok := strings.Cut(d, ":"); ok {
		d = hex
	}
	return shortID(d)
}
