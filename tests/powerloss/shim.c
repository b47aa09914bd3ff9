/*
 * Power-loss shim for hotpair's tests (LD_PRELOAD). Not part of the product.
 *
 * Job: lets a test cut the power to a node and keep, of the node's data directory, only what
 * the node made durable. Before every change the process makes to a file or directory under
 * HOTPAIR_POWERCUT_ROOT (a write, a truncation, a create, a rename, an unlink, a mkdir), the
 * shim appends to an undo log (HOTPAIR_POWERCUT_LOG.<pid>) what it takes to reverse it: the old
 * bytes, the old size, the name that was replaced (kept as a hard link in LOG.stash/). An fsync
 * or fdatasync of a file, or an fsync of a directory, appends a SYNC record: every change to
 * that file (to that directory's entries) logged before the fsync began is durable. The test
 * then SIGKILLs the node (its page cache is not lost, so the log is whole up to the last record
 * the process finished) and undoes, newest first, every change that no later SYNC covers
 * (tests/common/powerloss.rs): the files are as a power cut at that instant could leave them.
 *
 * The model is the strict POSIX one: data is durable only after fsync/fdatasync of the file,
 * a new, renamed or removed name only after fsync of its directory; sync_file_range makes
 * nothing durable. Real file systems often keep more (ext4 commits a new file's name with its
 * data); a test passing here passes there.
 *
 * Invariants:
 * - An undo record is complete in the log before the change it undoes starts; a record cut
 *   short by the kill belongs to a change that never started, and the reader ignores it.
 * - One mutex orders every logged change of the process, so the log's order is the order in
 *   which the changes happened; fsync is called outside it.
 * - Only paths under the root are logged; everything else passes straight through.
 *
 * Built by the tests with `cc -shared -fPIC -O2 -o shim.so shim.c -ldl -lpthread`.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { DATA = 1, SIZE = 2, SYNC = 3, CREATE = 4, RENAME = 5, UNLINK = 6, MKDIR = 7, DIRSYNC = 8 };
#define MAX_FDS 65536

static char root[PATH_MAX];
static size_t root_len;
static char stash[PATH_MAX];
static int log_fd = -1;
static uint64_t log_pos;
static uint64_t stash_count;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* Per descriptor: the inode under the root it refers to (0: not tracked), and whether it is a
 * directory or opened for appending. */
static uint64_t fd_ino[MAX_FDS];
static unsigned char fd_dir[MAX_FDS];
static unsigned char fd_append[MAX_FDS];

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_close)(int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_fcntl)(int, int, ...);
static int (*real_ftruncate64)(int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);
static int (*real_mkdir)(const char *, mode_t);

static __thread int inside; /* the shim's own calls pass through */

__attribute__((constructor)) static void init(void) {
    real_write = dlsym(RTLD_NEXT, "write");
    real_writev = dlsym(RTLD_NEXT, "writev");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat64 = dlsym(RTLD_NEXT, "openat64");
    real_close = dlsym(RTLD_NEXT, "close");
    real_dup = dlsym(RTLD_NEXT, "dup");
    real_dup2 = dlsym(RTLD_NEXT, "dup2");
    real_fcntl = dlsym(RTLD_NEXT, "fcntl");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_rename = dlsym(RTLD_NEXT, "rename");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
    real_unlinkat = dlsym(RTLD_NEXT, "unlinkat");
    real_mkdir = dlsym(RTLD_NEXT, "mkdir");
    const char *r = getenv("HOTPAIR_POWERCUT_ROOT");
    const char *l = getenv("HOTPAIR_POWERCUT_LOG");
    if (!r || !l || !realpath(r, root)) return;
    root_len = strlen(root);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s.%d", l, (int)getpid());
    snprintf(stash, sizeof stash, "%s.stash", l);
    real_mkdir(stash, 0700);
    log_fd = real_open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log_fd < 0) {
        fprintf(stderr, "powercut shim: cannot open %s: %s\n", path, strerror(errno));
        abort();
    }
}

static int active(void) { return log_fd >= 0 && !inside; }

/* Whether an absolute or cwd-relative path lies under the root; its absolute form in `out`. */
static int under_root(const char *path, char *out) {
    if (path[0] == '/') {
        snprintf(out, PATH_MAX, "%s", path);
    } else {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd)) return 0;
        snprintf(out, PATH_MAX, "%s/%s", cwd, path);
    }
    return strncmp(out, root, root_len) == 0 && (out[root_len] == '/' || out[root_len] == 0);
}

static void put(const void *bytes, size_t len, unsigned char *buf, size_t *at) {
    memcpy(buf + *at, bytes, len);
    *at += len;
}

/* Appends one record: u32 length of what follows, u8 kind, then the fields. Fatal if short:
 * a test must not go on with a log that does not say what happened. */
static void record(unsigned char kind, const unsigned char *body, size_t len) {
    uint32_t total = (uint32_t)(len + 1);
    unsigned char *buf = malloc(len + 5);
    if (!buf) abort();
    memcpy(buf, &total, 4);
    buf[4] = kind;
    memcpy(buf + 5, body, len);
    size_t done = 0;
    while (done < len + 5) {
        ssize_t n = real_write(log_fd, buf + done, len + 5 - done);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            abort();
        }
        done += (size_t)n;
    }
    free(buf);
    log_pos += len + 5;
}

static void record_u64s(unsigned char kind, uint64_t a, uint64_t b) {
    unsigned char body[16];
    memcpy(body, &a, 8);
    memcpy(body + 8, &b, 8);
    record(kind, body, 16);
}

/* Old bytes of [offset, offset + len) as far as the file has them, and the old size if the
 * change may grow the file. */
static void record_overwrite(int fd, uint64_t ino, off_t offset, size_t len) {
    struct stat st;
    if (fstat(fd, &st) != 0) abort();
    uint64_t size = (uint64_t)st.st_size;
    if ((uint64_t)offset + len > size) record_u64s(SIZE, ino, size);
    if ((uint64_t)offset >= size) return;
    size_t have = (size_t)((uint64_t)offset + len > size ? size - (uint64_t)offset : len);
    unsigned char *body = malloc(20 + have);
    if (!body) abort();
    uint64_t off = (uint64_t)offset;
    uint32_t n = (uint32_t)have;
    memcpy(body, &ino, 8);
    memcpy(body + 8, &off, 8);
    memcpy(body + 16, &n, 4);
    /* Through a descriptor of our own: `fd` may be open for writing only. */
    char self_fd[64];
    snprintf(self_fd, sizeof self_fd, "/proc/self/fd/%d", fd);
    int reader = real_open(self_fd, O_RDONLY | O_CLOEXEC, 0);
    if (reader < 0) abort();
    ssize_t got = pread(reader, body + 20, have, offset);
    real_close(reader);
    if (got != (ssize_t)have) abort();
    record(DATA, body, 20 + have);
    free(body);
}

static uint64_t ino_of_path(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* The directory part and the name of an absolute path. */
static void split(const char *abs, char *dir, const char **name) {
    snprintf(dir, PATH_MAX, "%s", abs);
    char *slash = strrchr(dir, '/');
    *name = abs + (slash - dir) + 1;
    if (slash == dir) slash[1] = 0; else *slash = 0;
}

/* A namespace record: dir inode, inode, then name strings (u16 length each). */
static void record_names(unsigned char kind, uint64_t dir, uint64_t ino, const char *name, uint64_t dir2,
                         const char *name2, uint64_t replaced, const char *stashed) {
    unsigned char body[3 * PATH_MAX + 64];
    size_t at = 0;
    const char *texts[3] = {name, name2 ? name2 : "", stashed ? stashed : ""};
    put(&dir, 8, body, &at);
    put(&ino, 8, body, &at);
    put(&dir2, 8, body, &at);
    put(&replaced, 8, body, &at);
    for (int i = 0; i < 3; i++) {
        uint16_t n = (uint16_t)strlen(texts[i]);
        put(&n, 2, body, &at);
        put(texts[i], n, body, &at);
    }
    record(kind, body, at);
}

/* Keeps the file at `abs` as a hard link in the stash; its name there, in `out`. */
static int keep(const char *abs, char *out) {
    /* The stash outlives this process (a restarted node shares it): names carry the pid. */
    snprintf(out, PATH_MAX, "%d-%llu", (int)getpid(), (unsigned long long)++stash_count);
    char target[PATH_MAX];
    snprintf(target, sizeof target, "%s/%s", stash, out);
    return link(abs, target);
}

static void track(int fd, const char *abs, int flags) {
    if (fd < 0 || fd >= MAX_FDS) return;
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    fd_ino[fd] = (uint64_t)st.st_ino;
    fd_dir[fd] = S_ISDIR(st.st_mode);
    fd_append[fd] = (flags & O_APPEND) != 0;
    (void)abs;
}

static int do_open(int (*real)(const char *, int, ...), const char *path, int flags, mode_t mode) {
    char abs[PATH_MAX];
    if (!active() || !under_root(path, abs)) return real(path, flags, mode);
    pthread_mutex_lock(&lock);
    inside = 1;
    int existed = ino_of_path(abs) != 0;
    if (existed && (flags & O_TRUNC) && (flags & (O_WRONLY | O_RDWR))) {
        int probe = real(abs, O_RDONLY | O_CLOEXEC, 0);
        if (probe >= 0) {
            struct stat st;
            if (fstat(probe, &st) == 0 && S_ISREG(st.st_mode)) {
                record_overwrite(probe, (uint64_t)st.st_ino, 0, (size_t)st.st_size);
                record_u64s(SIZE, (uint64_t)st.st_ino, (uint64_t)st.st_size);
            }
            real_close(probe);
        }
    }
    int fd = real(path, flags, mode);
    int saved = errno;
    if (fd >= 0) {
        track(fd, abs, flags);
        if (!existed && (flags & O_CREAT)) {
            char dir[PATH_MAX];
            const char *name;
            split(abs, dir, &name);
            record_names(CREATE, ino_of_path(dir), fd < MAX_FDS ? fd_ino[fd] : ino_of_path(abs), name, 0, 0, 0, 0);
        }
    }
    inside = 0;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return fd;
}

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
    va_end(ap);
    return do_open(real_open, path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
    va_end(ap);
    return do_open(real_open64, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
    va_end(ap);
    if (dirfd == AT_FDCWD || path[0] == '/') return do_open(real_open64, path, flags, mode);
    /* Relative to a directory descriptor: not used by hotpair on its data directory. */
    return real_openat64(dirfd, path, flags, mode);
}

/* A descriptor of a regular file under the root. Checked against the file itself, so that a
 * descriptor closed behind the shim's back (and its number reused) is never taken for it. */
static int tracked(int fd) {
    if (!active() || fd < 0 || fd >= MAX_FDS || fd_ino[fd] == 0 || fd_dir[fd]) return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_ino != fd_ino[fd]) {
        fd_ino[fd] = 0;
        return 0;
    }
    return 1;
}

static off_t where_next(int fd) {
    if (fd_append[fd]) {
        struct stat st;
        return fstat(fd, &st) == 0 ? st.st_size : 0;
    }
    return lseek(fd, 0, SEEK_CUR);
}

ssize_t write(int fd, const void *buf, size_t n) {
    if (!tracked(fd)) return real_write(fd, buf, n);
    pthread_mutex_lock(&lock);
    inside = 1;
    record_overwrite(fd, fd_ino[fd], where_next(fd), n);
    ssize_t done = real_write(fd, buf, n);
    int saved = errno;
    inside = 0;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return done;
}

ssize_t writev(int fd, const struct iovec *iov, int count) {
    if (!tracked(fd)) return real_writev(fd, iov, count);
    size_t n = 0;
    for (int i = 0; i < count; i++) n += iov[i].iov_len;
    pthread_mutex_lock(&lock);
    inside = 1;
    record_overwrite(fd, fd_ino[fd], where_next(fd), n);
    ssize_t done = real_writev(fd, iov, count);
    int saved = errno;
    inside = 0;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return done;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t offset) {
    if (!tracked(fd)) return real_pwrite64(fd, buf, n, offset);
    pthread_mutex_lock(&lock);
    inside = 1;
    record_overwrite(fd, fd_ino[fd], offset, n);
    ssize_t done = real_pwrite64(fd, buf, n, offset);
    int saved = errno;
    inside = 0;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return done;
}

int ftruncate64(int fd, off_t length) {
    if (!tracked(fd)) return real_ftruncate64(fd, length);
    pthread_mutex_lock(&lock);
    inside = 1;
    struct stat st;
    if (fstat(fd, &st) != 0) abort();
    if (length < st.st_size) record_overwrite(fd, fd_ino[fd], length, (size_t)(st.st_size - length));
    record_u64s(SIZE, fd_ino[fd], (uint64_t)st.st_size);
    int result = real_ftruncate64(fd, length);
    int saved = errno;
    inside = 0;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return result;
}

static int sync_with(int (*real)(int), int fd) {
    if (!active() || fd < 0 || fd >= MAX_FDS || fd_ino[fd] == 0) return real(fd);
    pthread_mutex_lock(&lock);
    uint64_t upto = log_pos;
    pthread_mutex_unlock(&lock);
    int result = real(fd);
    int saved = errno;
    if (result == 0) {
        pthread_mutex_lock(&lock);
        inside = 1;
        record_u64s(fd_dir[fd] ? DIRSYNC : SYNC, fd_ino[fd], upto);
        inside = 0;
        pthread_mutex_unlock(&lock);
    }
    errno = saved;
    return result;
}

int fsync(int fd) { return sync_with(real_fsync, fd); }
int fdatasync(int fd) { return sync_with(real_fdatasync, fd); }

int close(int fd) {
    if (fd >= 0 && fd < MAX_FDS) fd_ino[fd] = 0;
    return real_close(fd);
}

static void copy_entry(int from, int to) {
    if (from >= 0 && from < MAX_FDS && to >= 0 && to < MAX_FDS) {
        fd_ino[to] = fd_ino[from];
        fd_dir[to] = fd_dir[from];
        fd_append[to] = fd_append[from];
    }
}

int dup(int fd) {
    int copy = real_dup(fd);
    copy_entry(fd, copy);
    return copy;
}

int dup2(int fd, int to) {
    int copy = real_dup2(fd, to);
    if (copy >= 0) copy_entry(fd, copy);
    return copy;
}

int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    int result = real_fcntl(fd, cmd, arg);
    if ((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && result >= 0) copy_entry(fd, result);
    return result;
}

int rename(const char *from, const char *to) {
    char a[PATH_MAX], b[PATH_MAX];
    if (!active() || !(under_root(from, a) && under_root(to, b))) return real_rename(from, to);
    pthread_mutex_lock(&lock);
    inside = 1;
    char dir_a[PATH_MAX], dir_b[PATH_MAX], kept[PATH_MAX] = "";
    const char *name_a, *name_b;
    split(a, dir_a, &name_a);
    split(b, dir_b, &name_b);
    uint64_t moved = ino_of_path(a), replaced = ino_of_path(b);
    if (replaced && keep(b, kept) != 0) abort();
    record_names(RENAME, ino_of_path(dir_a), moved, name_a, ino_of_path(dir_b), name_b, replaced, kept);
    int result = real_rename(from, to);
    int saved = errno;
    inside = 0;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return result;
}

static int unlink_logged(const char *abs, int (*then)(void *), void *arg) {
    pthread_mutex_lock(&lock);
    inside = 1;
    char dir[PATH_MAX], kept[PATH_MAX] = "";
    const char *name;
    split(abs, dir, &name);
    uint64_t ino = ino_of_path(abs);
    if (ino && keep(abs, kept) == 0) record_names(UNLINK, ino_of_path(dir), ino, name, 0, 0, 0, kept);
    int result = then(arg);
    int saved = errno;
    inside = 0;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return result;
}

static int call_unlink(void *path) { return real_unlink((const char *)path); }

int unlink(const char *path) {
    char abs[PATH_MAX];
    if (!active() || !under_root(path, abs)) return real_unlink(path);
    return unlink_logged(abs, call_unlink, (void *)path);
}

struct unlinkat_args { int dirfd; const char *path; int flags; };
static int call_unlinkat(void *p) {
    struct unlinkat_args *a = p;
    return real_unlinkat(a->dirfd, a->path, a->flags);
}

int unlinkat(int dirfd, const char *path, int flags) {
    char abs[PATH_MAX];
    /* Directories (AT_REMOVEDIR) and paths relative to a descriptor pass through: hotpair
     * removes journal segments by absolute path. */
    if (!active() || (flags & AT_REMOVEDIR) || (dirfd != AT_FDCWD && path[0] != '/') || !under_root(path, abs))
        return real_unlinkat(dirfd, path, flags);
    struct unlinkat_args args = {dirfd, path, flags};
    return unlink_logged(abs, call_unlinkat, &args);
}

int mkdir(const char *path, mode_t mode) {
    char abs[PATH_MAX];
    if (!active() || !under_root(path, abs)) return real_mkdir(path, mode);
    pthread_mutex_lock(&lock);
    inside = 1;
    int result = real_mkdir(path, mode);
    int saved = errno;
    if (result == 0) {
        char dir[PATH_MAX];
        const char *name;
        split(abs, dir, &name);
        record_names(MKDIR, ino_of_path(dir), ino_of_path(abs), name, 0, 0, 0, 0);
    }
    inside = 0;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return result;
}
