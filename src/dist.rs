//! The ranks a step runs with: one process (always), or W processes started by an MPI launcher
//! (`mpirun -n W`, or `srun` under Slurm) in builds with the `mpi` feature, which sum
//! gradients with MPI's `Allreduce` (rsmpi over the system's MPI library, e.g. OpenMPI).
//! There is no collective code of our own: a build without the feature runs one rank only.

/// This process's place among the step's ranks. Cheap to copy; collectives go through MPI's
/// world communicator, valid while the [`Session`] that started MPI lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dist {
    rank: usize,
    world: usize,
}

impl Default for Dist {
    fn default() -> Self {
        Self::single()
    }
}

/// The largest buffer one `Allreduce` call is given (MPI counts are 32-bit).
#[cfg(feature = "mpi")]
const CHUNK: usize = 1 << 24;

impl Dist {
    /// One rank: collectives are the identity.
    pub fn single() -> Self {
        Dist { rank: 0, world: 1 }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Rank 0 writes metrics, checkpoints and the step's artifacts.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Sums `buf` element-wise over the ranks, in place, on every rank.
    pub fn sum_f32(&self, buf: &mut [f32]) {
        self.sum(buf)
    }

    /// Sums `buf` element-wise over the ranks, in place, on every rank.
    pub fn sum_f64(&self, buf: &mut [f64]) {
        self.sum(buf)
    }

    #[cfg(feature = "mpi")]
    fn sum<T: mpi::datatype::Equivalence + Copy>(&self, buf: &mut [T]) {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        if self.world == 1 {
            return;
        }
        let comm = mpi::topology::SimpleCommunicator::world();
        for chunk in buf.chunks_mut(CHUNK) {
            let send = chunk.to_vec();
            comm.all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
    }

    /// Without MPI there is one rank: nothing to sum.
    #[cfg(not(feature = "mpi"))]
    fn sum<T>(&self, _buf: &mut [T]) {
        debug_assert_eq!(self.world, 1);
    }

    /// Sums `buf` over the ranks like [`Self::sum_f64`], after checking that every rank holds
    /// as many values (`what` names them in the error).
    pub fn sum_f64_checked(&self, buf: &mut [f64], what: &str) -> anyhow::Result<()> {
        let counts = self.gather_u64(buf.len() as u64);
        anyhow::ensure!(
            counts.iter().all(|&c| c == buf.len() as u64),
            "the ranks report different {what} ({counts:?} values)"
        );
        self.sum_f64(buf);
        Ok(())
    }

    /// Waits until every rank is here.
    pub fn barrier(&self) {
        if self.world == 1 {
            return;
        }
        #[cfg(feature = "mpi")]
        {
            use mpi::collective::CommunicatorCollectives;
            mpi::topology::SimpleCommunicator::world().barrier();
        }
    }

    /// Every rank's `value`, in rank order (to check that the ranks agree).
    pub fn gather_u64(&self, value: u64) -> Vec<u64> {
        let mut all = vec![0.0f64; self.world];
        all[self.rank] = value as f64;
        self.sum_f64(&mut all);
        all.into_iter().map(|v| v as u64).collect()
    }
}

/// MPI, started for the lifetime of this value when the process was launched as one of several
/// ranks; finalised when dropped (so the launcher sees a clean exit).
pub struct Session {
    pub dist: Dist,
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

/// How many ranks the launcher that started this process says there are (OpenMPI's, MPICH's
/// and PMIx's variables, and `srun`'s task count). 1 when none is set.
pub fn launched_ranks() -> usize {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_STEP_NUM_TASKS",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok())
    .unwrap_or(1)
    .max(1)
}

impl Session {
    /// Starts MPI if this process is one of several ranks. Fails when it is and this build has
    /// no MPI, or when MPI does not start.
    pub fn start() -> anyhow::Result<Session> {
        let launched = launched_ranks();
        #[cfg(feature = "mpi")]
        {
            if launched > 1 || std::env::var_os("PMIX_RANK").is_some() {
                let universe = mpi::initialize()
                    .ok_or_else(|| anyhow::anyhow!("MPI was already started in this process"))?;
                use mpi::topology::Communicator;
                let world = universe.world();
                let dist = Dist {
                    rank: world.rank() as usize,
                    world: world.size() as usize,
                };
                return Ok(Session {
                    dist,
                    _universe: Some(universe),
                });
            }
            Ok(Session {
                dist: Dist::single(),
                _universe: None,
            })
        }
        #[cfg(not(feature = "mpi"))]
        {
            if launched > 1 {
                anyhow::bail!(
                    "this process is one of {launched} ranks, but this runner was built without MPI; build it with `--features mpi` (needs an MPI library such as OpenMPI, and libclang)"
                );
            }
            Ok(Session {
                dist: Dist::single(),
            })
        }
    }
}

impl Session {
    /// Ends every rank of the step with `code` (MPI_Abort); for a rank that failed while the
    /// others may wait for it.
    pub fn abort(self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if self._universe.is_some() {
            use mpi::topology::Communicator;
            mpi::topology::SimpleCommunicator::world().abort(code);
        }
        std::process::exit(code)
    }
}

/// Whether this build can run a step with several ranks.
pub fn available() -> bool {
    cfg!(feature = "mpi")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rank_collectives_are_the_identity() {
        let d = Dist::single();
        let mut v = vec![1.0f32, -2.5];
        d.sum_f32(&mut v);
        assert_eq!(v, [1.0, -2.5]);
        assert_eq!(d.gather_u64(7), [7]);
        assert!(d.is_root());
    }
}
