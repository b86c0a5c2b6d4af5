package cache

import (
	"container/list"
	"sync"

	"github.com/gpuwarm/gpuwarm/digest"
)

// memTier is an LRU of chunk plaintexts bounded in bytes.
type memTier struct {
	mu      sync.Mutex
	limit   int64
	used    int64
	lru     *list.List // front = most recent; values *memEntry
	entries map[digest.ID]*list.Element
	hits    int64
	misses  int64
	evicted int64
}

type memEntry struct {
	id   digest.ID
	data []byte
}

func newMemTier(limit int64) *memTier {
	return &memTier{limit: limit, lru: list.New(), entries: make(map[digest.ID]*list.Element)}
}

func (m *memTier) get(id digest.ID) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.entries[id]; ok {
		m.lru.MoveToFront(el)
		m.hits++
		return el.Value.(*memEntry).data, true
	}
	m.misses++
	return nil, false
}

// peek is get without counting a hit or miss.
func (m *memTier) peek(id digest.ID) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.entries[id]; ok {
		return el.Value.(*memEntry).data, true
	}
	return nil, false
}

func (m *memTier) has(id digest.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.entries[id]
	return ok
}

func (m *memTier) add(id digest.ID, b []byte) {
	size := int64(len(b))
	m.mu.Lock()
	defer m.mu.Unlock()
	if size > m.limit {
		return
	}
	if el, ok := m.entries[id]; ok {
		m.lru.MoveToFront(el)
		return
	}
	for m.used+size > m.limit {
		el := m.lru.Back()
		e := el.Value.(*memEntry)
		m.lru.Remove(el)
		delete(m.entries, e.id)
		m.used -= int64(len(e.data))
		m.evicted++
	}
	m.entries[id] = m.lru.PushFront(&memEntry{id: id, data: b})
	m.used += size
}

func (m *memTier) clear() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lru.Init()
	m.entries = make(map[digest.ID]*list.Element)
	m.used = 0
}

func (m *memTier) stats() TierStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return TierStats{Hits: m.hits, Misses: m.misses, Bytes: m.used, Limit: m.limit,
		Entries: int64(len(m.entries)), Evictions: m.evicted}
}
