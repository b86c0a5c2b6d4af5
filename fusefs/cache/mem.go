package cache

import (
	"container/list"
	"sync"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

// memTier is an LRU of chunk plaintexts bounded in bytes (the memory the
// buffers occupy). It holds one reference on each buffer in it.
type memTier struct {
	mu      sync.Mutex
	limit   int64
	used    int64
	lru     *list.List // front = most recent; values *memEntry
	entries map[digest.ID]*list.Element
	hits    int64
	misses  int64
	evicted int64
	// onDrop, if set, is told of every buffer the tier lets go (outside
	// the lock, before the tier's reference is released).
	onDrop func(*buf)
}

type memEntry struct {
	id digest.ID
	b  *buf
}

func newMemTier(limit int64) *memTier {
	return &memTier{limit: limit, lru: list.New(), entries: make(map[digest.ID]*list.Element)}
}

// get returns the chunk with a reference the caller releases.
func (m *memTier) get(id digest.ID) (*buf, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.entries[id]; ok {
		m.lru.MoveToFront(el)
		m.hits++
		b := el.Value.(*memEntry).b
		b.ref()
		return b, true
	}
	m.misses++
	return nil, false
}

// peek is get without counting a hit or miss.
func (m *memTier) peek(id digest.ID) (*buf, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.entries[id]; ok {
		b := el.Value.(*memEntry).b
		b.ref()
		return b, true
	}
	return nil, false
}

func (m *memTier) has(id digest.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.entries[id]
	return ok
}

// add puts b in the tier (taking its own reference), evicting the least
// recently used chunks to stay within the limit.
func (m *memTier) add(id digest.ID, b *buf) {
	size := b.size()
	var dropped []*buf
	m.mu.Lock()
	if size > m.limit {
		m.mu.Unlock()
		return
	}
	if el, ok := m.entries[id]; ok {
		m.lru.MoveToFront(el)
		m.mu.Unlock()
		return
	}
	for m.used+size > m.limit {
		el := m.lru.Back()
		e := el.Value.(*memEntry)
		m.lru.Remove(el)
		delete(m.entries, e.id)
		m.used -= e.b.size()
		m.evicted++
		dropped = append(dropped, e.b)
	}
	b.ref()
	m.entries[id] = m.lru.PushFront(&memEntry{id: id, b: b})
	m.used += size
	m.mu.Unlock()
	m.drop(dropped...)
}

func (m *memTier) drop(bs ...*buf) {
	for _, b := range bs {
		if m.onDrop != nil {
			m.onDrop(b)
		}
		b.release()
	}
}

// holds reports whether b is the tier's buffer for id.
func (m *memTier) holds(id digest.ID, b *buf) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.entries[id]
	return ok && el.Value.(*memEntry).b == b
}

// remove drops id; it reports whether the tier held it.
func (m *memTier) remove(id digest.ID) bool {
	m.mu.Lock()
	el, ok := m.entries[id]
	if !ok {
		m.mu.Unlock()
		return false
	}
	e := el.Value.(*memEntry)
	m.lru.Remove(el)
	delete(m.entries, id)
	m.used -= e.b.size()
	m.mu.Unlock()
	m.drop(e.b) // readers holding their own references keep the bytes
	return true
}

func (m *memTier) clear() {
	m.mu.Lock()
	var dropped []*buf
	for _, el := range m.entries {
		dropped = append(dropped, el.Value.(*memEntry).b)
	}
	m.lru.Init()
	m.entries = make(map[digest.ID]*list.Element)
	m.used = 0
	m.mu.Unlock()
	m.drop(dropped...)
}

func (m *memTier) stats() TierStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return TierStats{Hits: m.hits, Misses: m.misses, Bytes: m.used, Limit: m.limit,
		Entries: int64(len(m.entries)), Evictions: m.evicted}
}
