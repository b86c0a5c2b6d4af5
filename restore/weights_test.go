package restore

import "testing"

func FuzzParseWeightsMeta(f *testing.F) {
	f.Add(`{"socket":"/run/w.sock","processes":1,"bytes":4,"refs":[{"name":"a","image":"` + zeroish + `","path":"m/f","source":"/m/by-id/x/m/f","offset":8,"length":4}]}`)
	f.Add(`{"processes":0}`)
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseWeightsMeta(s)
		if err != nil || m == nil {
			return
		}
		var sum int64
		for _, r := range m.Refs {
			if r.Length <= 0 || r.Offset < 0 {
				t.Fatalf("accepted %+v", r)
			}
			sum += r.Length
		}
		if sum != m.Bytes || m.Processes <= 0 {
			t.Fatalf("accepted %+v", m)
		}
	})
}

const zeroish = "1111111111111111111111111111111111111111111111111111111111111111"
