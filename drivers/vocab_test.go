package drivers

import (
	"maps"
	"slices"
	"testing"

	"github.com/spinneret-cni/spinneret/drivers/vocab"
)

func names[T any](m map[string]T) []string { return slices.Sorted(maps.Keys(m)) }

// Every name of the vocabulary has a kernel value, and nothing else has.
func TestVocabularyHasKernelValues(t *testing.T) {
	for _, c := range []struct{ vocab, kernel []string }{
		{vocab.MacvlanModes, names(MacvlanModes)},
		{vocab.IpvlanModes, names(IpvlanModes)},
		{vocab.IpvlanFlags, names(IpvlanFlags)},
		{vocab.LinkStates, names(LinkStates)},
	} {
		if !slices.Equal(slices.Sorted(slices.Values(c.vocab)), c.kernel) {
			t.Errorf("vocabulary %v, kernel values for %v", c.vocab, c.kernel)
		}
	}
}
