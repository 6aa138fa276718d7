//! The few bpf(2) calls aya 0.14 does not offer: cgroup storage with the
//! shared u64 key (aya only supports the per-attach-type key), element
//! updates under the value's bpf_spin_lock, and a cgroup link's target.
//! The kernel's info structs come from aya-obj's generated bindings, the
//! same ones aya uses, rather than hand-kept offsets.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya_obj::generated::{bpf_link_info, bpf_map_info, bpf_prog_info};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;
/// Copy the value while holding its bpf_spin_lock (the lock itself is skipped).
const BPF_F_LOCK: u64 = 4;

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: attr is a live, correctly laid out bpf_attr prefix for cmd, and
    // the kernel reads at most size_of::<T>() bytes of it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A bpf(2) command that returns a new file descriptor on success.
fn sys_bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: as in sys_bpf; a non-negative return is a new fd we own.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(ret as i32) })
}

/// Marker for plain-old-data map values: any bit pattern is valid.
///
/// # Safety
/// The type must be `repr(C)`, without padding that matters, and valid for all bit patterns.
pub unsafe trait Pod: Copy + Default {}

// SAFETY: plain integers.
unsafe impl Pod for u64 {}
// SAFETY: plain integers.
unsafe impl Pod for u32 {}

/// The bytes of a plain-old-data value, as bpf(2) takes keys and values.
fn bytes_of<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod: repr(C) integers, every byte initialised.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

/// Reads a value under its spin lock, at the map's own value size: a map of
/// another plugin build may hold an older or newer layout of the value,
/// which the caller interprets (see state::IfaceState::from_value).
pub fn lookup_locked_bytes<K: Pod>(map: BorrowedFd<'_>, key: &K) -> io::Result<Vec<u8>> {
    let info = map_info(map)?;
    let key = bytes_of(key);
    if info.key_size as usize != key.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("map has {}-byte keys, expected {}", info.key_size, key.len())));
    }
    let mut value = vec![0u8; info.value_size as usize];
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        flags: BPF_F_LOCK,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}

/// How `update` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Create or replace a value without a spin lock.
    Plain,
    /// Create or replace a value, under its spin lock.
    Locked,
    /// Replace an existing value only, under its spin lock.
    LockedExisting,
    /// Create a value whose key is free only (EEXIST otherwise).
    LockedNew,
}

/// Writes a value, refusing a map whose key or value size is not this
/// build's: never into another build's map.
pub fn update<K: Pod, V: Pod>(map: BorrowedFd<'_>, key: &K, value: &V, how: Update) -> io::Result<()> {
    check_sizes::<K, V>(map)?;
    let flags = match how {
        Update::Plain => 0,
        Update::Locked => BPF_F_LOCK,
        Update::LockedExisting => BPF_F_LOCK | BPF_EXIST,
        Update::LockedNew => BPF_F_LOCK | BPF_NOEXIST,
    };
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: bytes_of(key).as_ptr() as u64,
        value: value as *const V as u64,
        flags,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

/// Overwrites an existing value under its spin lock.
pub fn update_locked<K: Pod, V: Pod>(map: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    update(map, key, value, Update::LockedExisting)
}

/// Deletes an element; a missing one is not an error.
pub fn delete<K: Pod>(map: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = MapElemAttr { map_fd: map.as_raw_fd() as u32, key: bytes_of(key).as_ptr() as u64, ..Default::default() };
    match sys_bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Refuses a map whose key or value size is not `K`'s and `V`'s.
fn check_sizes<K, V>(map: BorrowedFd<'_>) -> io::Result<()> {
    let info = map_info(map)?;
    let (key_size, value_size) = (info.key_size as usize, info.value_size as usize);
    let (want_key, want_value) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    if key_size != want_key || value_size != want_value {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("map has {key_size}-byte keys and {value_size}-byte values, expected {want_key} and {want_value}"),
        ));
    }
    Ok(())
}

/// BPF_OBJ_GET_INFO_BY_FD into one of the kernel's info structs. The kernel
/// fills at most `info_len` bytes and zeroes nothing beyond, so start zeroed.
fn obj_info<T: Copy>(fd: BorrowedFd<'_>) -> io::Result<T> {
    // SAFETY: T is one of the generated bpf_*_info structs: integers and
    // unions of integers, for which all-zero is a valid value.
    let mut info: T = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<T>() as u32,
        info: &mut info as *mut T as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

pub fn map_info(map: BorrowedFd<'_>) -> io::Result<bpf_map_info> {
    obj_info(map)
}

pub fn prog_info(prog: BorrowedFd<'_>) -> io::Result<bpf_prog_info> {
    obj_info(prog)
}

/// What we read of a cgroup bpf_link.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    pub cgroup_id: u64,
    pub attach_type: u32,
}

pub const BPF_LINK_TYPE_CGROUP: u32 = 3;

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<CgroupLinkInfo> {
    let info: bpf_link_info = obj_info(link)?;
    // SAFETY: the union is read as its cgroup variant only for cgroup links.
    let cgroup = (info.type_ == BPF_LINK_TYPE_CGROUP).then(|| unsafe { info.__bindgen_anon_1.cgroup });
    Ok(CgroupLinkInfo {
        link_type: info.type_,
        id: info.id,
        prog_id: info.prog_id,
        cgroup_id: cgroup.map_or(0, |c| c.cgroup_id),
        attach_type: cgroup.map_or(0, |c| c.attach_type),
    })
}

const BPF_OBJ_GET: libc::c_long = 7;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned BPF object (program, map or link).
pub fn obj_get(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    let c = path_cstring(path)?;
    let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, ..Default::default() };
    sys_bpf_fd(BPF_OBJ_GET, &mut attr)
}

fn path_cstring(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
/// BPF_CGROUP_INET_EGRESS
pub const ATTACH_CGROUP_INET_EGRESS: u32 = 1;

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// IDs of the programs attached directly to a cgroup for `attach_type`: one
/// query, cheap on a pod cgroup, unlike walking every attachment's pins.
pub fn attached_prog_ids(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(ids[..(attr.prog_cnt as usize).min(ids.len())].to_vec())
}

/// The name of a loaded program, by ID (for messages and the demo's check).
pub fn prog_name(id: u32) -> io::Result<String> {
    let mut by_id = GetFdByIdAttr { id, ..Default::default() };
    let fd = sys_bpf_fd(BPF_PROG_GET_FD_BY_ID, &mut by_id)?;
    let info = prog_info(std::os::fd::AsFd::as_fd(&fd))?;
    let name: Vec<u8> = info.name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    Ok(String::from_utf8_lossy(&name).into_owned())
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
/// BPF_CGROUP_INET_INGRESS
pub const ATTACH_CGROUP_INET_INGRESS: u32 = 0;
/// BPF_CGROUP_SOCK_OPS
pub const ATTACH_CGROUP_SOCK_OPS: u32 = 3;
/// BPF_CGROUP_SETSOCKOPT
pub const ATTACH_CGROUP_SETSOCKOPT: u32 = 22;

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches a program to a cgroup as a bpf_link. Dropping the returned fd
/// detaches it, unless it was pinned first.
///
/// ADD calls this directly rather than through aya, whose first use in a
/// process runs a dozen feature-probing program and BTF loads: a plugin
/// process attaches once and exits, so that was most of a warm ADD.
pub fn link_create(prog: BorrowedFd<'_>, cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<std::os::fd::OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    sys_bpf_fd(BPF_LINK_CREATE, &mut attr)
}

/// Pins a BPF object (link, map, program) at a bpffs path.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let c = path_cstring(path)?;
    let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0 };
    sys_bpf(BPF_OBJ_PIN, &mut attr)
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// Creates a one-entry array map holding `value`: a small record that can be
/// pinned beside BPF objects on bpffs, which holds no regular files.
pub fn record_create(name: &str, value: &[u8]) -> io::Result<std::os::fd::OwnedFd> {
    let mut map_name = [0u8; 16];
    for (d, s) in map_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: value.len() as u32,
        max_entries: 1,
        map_name,
        ..Default::default()
    };
    let map = sys_bpf_fd(BPF_MAP_CREATE, &mut attr)?;
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut record_elem(map.as_fd(), value.as_ptr() as u64))?;
    Ok(map)
}

/// The element attribute of a one-entry record map (its key is 0).
fn record_elem(map: BorrowedFd<'_>, value: u64) -> MapElemAttr {
    const KEY: u32 = 0;
    MapElemAttr { map_fd: map.as_raw_fd() as u32, key: &KEY as *const u32 as u64, value, ..Default::default() }
}

/// Reads the value of a one-entry array map made by `record_create`.
pub fn record_read(map: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut value = vec![0u8; map_info(map)?.value_size as usize];
    sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut record_elem(map, value.as_mut_ptr() as u64))?;
    Ok(value)
}

/// Overwrites the value of a one-entry array map made by `record_create`;
/// `value` must be the map's value size.
pub fn record_write(map: BorrowedFd<'_>, value: &[u8]) -> io::Result<()> {
    let size = map_info(map)?.value_size as usize;
    if value.len() != size {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a {}-byte record for a {size}-byte map", value.len())));
    }
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut record_elem(map, value.as_ptr() as u64))
}
