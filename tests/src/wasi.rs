//! The few `wasi_snapshot_preview1` imports a proxy-wasm module built for wasm32-wasip1 links:
//! stdout/stderr go to the VM's logs, clocks read the harness clock, no files, no environment.

use crate::hostcalls::{read, write, write_u32, write_u64, Registry, C};
use wasmtime::{bail, format_err, Result};

const W: &str = "wasi_snapshot_preview1";

const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;
const ENOTCAPABLE: i32 = 76;
const ESPIPE: i32 = 70;

fn read_u32_at(c: &C, ptr: i32) -> Result<u32> {
    let b = read(c, ptr, 4)?;
    let arr: [u8; 4] = b
        .as_slice()
        .try_into()
        .map_err(|_| format_err!("short read"))?;
    Ok(u32::from_le_bytes(arr))
}

fn fd_write(c: &mut C, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32) -> Result<i32> {
    let mut data = Vec::new();
    for i in 0..iovs_len.max(0) {
        let base = iovs.wrapping_add(i * 8);
        let ptr = read_u32_at(c, base)?;
        let len = read_u32_at(c, base.wrapping_add(4))?;
        data.extend_from_slice(&read(c, ptr as i32, len as i32)?);
    }
    if fd != 1 && fd != 2 {
        return Ok(EBADF);
    }
    let n = data.len() as u32;
    c.data_mut().write_output(fd, &data);
    write_u32(c, nwritten, n)?;
    Ok(SUCCESS)
}

pub(crate) fn define_wasi(r: &mut Registry) -> Result<()> {
    r.func(
        W,
        "fd_write",
        |mut c: C, fd: i32, iovs: i32, n: i32, nw: i32| fd_write(&mut c, fd, iovs, n, nw),
    )?;
    r.func(
        W,
        "fd_read",
        |mut c: C, fd: i32, _: i32, _: i32, nread: i32| -> Result<i32> {
            if fd == 0 {
                write_u32(&mut c, nread, 0)?;
                return Ok(SUCCESS);
            }
            Ok(EBADF)
        },
    )?;
    r.func(W, "fd_close", |_: C, _: i32| -> Result<i32> { Ok(SUCCESS) })?;
    r.func(
        W,
        "fd_seek",
        |_: C, _: i32, _: i64, _: i32, _: i32| -> Result<i32> { Ok(ESPIPE) },
    )?;
    r.func(W, "fd_sync", |_: C, _: i32| -> Result<i32> { Ok(SUCCESS) })?;
    r.func(
        W,
        "fd_fdstat_get",
        |mut c: C, fd: i32, buf: i32| -> Result<i32> {
            if !(0..=2).contains(&fd) {
                return Ok(EBADF);
            }
            // fdstat: filetype u8 (2 = character device), flags u16, rights u64 x2.
            let mut stat = [0u8; 24];
            if let Some(b) = stat.first_mut() {
                *b = 2;
            }
            write(&mut c, buf, &stat)?;
            Ok(SUCCESS)
        },
    )?;
    r.func(
        W,
        "fd_fdstat_set_flags",
        |_: C, _: i32, _: i32| -> Result<i32> { Ok(ENOSYS) },
    )?;
    r.func(
        W,
        "fd_filestat_get",
        |_: C, _: i32, _: i32| -> Result<i32> { Ok(EBADF) },
    )?;
    // No preopened directories: std stops enumerating at the first EBADF.
    r.func(W, "fd_prestat_get", |_: C, _: i32, _: i32| -> Result<i32> {
        Ok(EBADF)
    })?;
    r.func(
        W,
        "fd_prestat_dir_name",
        |_: C, _: i32, _: i32, _: i32| -> Result<i32> { Ok(EBADF) },
    )?;
    r.func(
        W,
        "path_open",
        |_: C,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i64,
         _: i64,
         _: i32,
         _: i32|
         -> Result<i32> { Ok(ENOTCAPABLE) },
    )?;
    r.func(
        W,
        "path_filestat_get",
        |_: C, _: i32, _: i32, _: i32, _: i32, _: i32| -> Result<i32> { Ok(ENOTCAPABLE) },
    )?;
    for (sizes, get) in [
        ("environ_sizes_get", "environ_get"),
        ("args_sizes_get", "args_get"),
    ] {
        r.func(W, sizes, |mut c: C, count: i32, size: i32| -> Result<i32> {
            write_u32(&mut c, count, 0)?;
            write_u32(&mut c, size, 0)?;
            Ok(SUCCESS)
        })?;
        r.func(W, get, |_: C, _: i32, _: i32| -> Result<i32> {
            Ok(SUCCESS)
        })?;
    }
    r.func(
        W,
        "clock_time_get",
        |mut c: C, id: i32, _precision: i64, ret: i32| -> Result<i32> {
            if !(0..=3).contains(&id) {
                return Ok(EINVAL);
            }
            let now = c.data().world()?.now_ns;
            write_u64(&mut c, ret, now)?;
            Ok(SUCCESS)
        },
    )?;
    r.func(
        W,
        "clock_res_get",
        |mut c: C, _: i32, ret: i32| -> Result<i32> {
            write_u64(&mut c, ret, 1_000)?;
            Ok(SUCCESS)
        },
    )?;
    r.func(
        W,
        "random_get",
        |mut c: C, buf: i32, len: i32| -> Result<i32> {
            let mut bytes = vec![0u8; len.max(0) as usize];
            c.data().world()?.random_fill(&mut bytes);
            write(&mut c, buf, &bytes)?;
            Ok(SUCCESS)
        },
    )?;
    r.func(W, "sched_yield", |_: C| -> Result<i32> { Ok(SUCCESS) })?;
    r.func(
        W,
        "poll_oneoff",
        |_: C, _: i32, _: i32, _: i32, _: i32| -> Result<i32> { Ok(ENOSYS) },
    )?;
    r.func(W, "proc_exit", |_: C, code: i32| -> Result<()> {
        bail!("proc_exit({code}) called by the module")
    })?;
    Ok(())
}
