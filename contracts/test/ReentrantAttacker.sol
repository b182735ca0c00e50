// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

interface IStagewiseStaking {
    function stake() external payable;
    function requestUnstake(uint256 amount) external;
    function withdraw() external;
    function claim(uint256 cumulativeAmount, bytes32[] calldata proof) external;
}

/// @notice Test-only: a worker contract that, when paid, calls back into the staking contract to be paid
/// again. It records what the re-entrant call answered, so a test can check that the reentrancy lock (not
/// some later check) refused it.
contract ReentrantAttacker {
    IStagewiseStaking public immutable target;
    uint8 private mode; // 0 idle, 1 re-enter withdraw, 2 re-enter claim
    uint256 private claimAmount;
    bytes32[] private claimProof;

    uint256 public reentrySucceeded;
    bytes public reentryError;
    bool public rejectPayments;

    constructor(address target_) {
        target = IStagewiseStaking(target_);
    }

    function stake() external payable {
        target.stake{value: msg.value}();
    }

    function requestUnstake(uint256 amount) external {
        target.requestUnstake(amount);
    }

    /// @notice Make this contract refuse every payment, to see the staking contract report TransferFailed.
    function setRejectPayments(bool reject) external {
        rejectPayments = reject;
    }

    function withdraw() external {
        target.withdraw();
    }

    function attackWithdraw() external {
        mode = 1;
        target.withdraw();
        mode = 0;
    }

    function attackClaim(uint256 cumulativeAmount, bytes32[] calldata proof) external {
        mode = 2;
        claimAmount = cumulativeAmount;
        claimProof = proof;
        target.claim(cumulativeAmount, proof);
        mode = 0;
    }

    receive() external payable {
        if (rejectPayments) revert("payments refused");
        uint8 current = mode;
        mode = 0;
        if (current == 1) {
            try target.withdraw() {
                reentrySucceeded += 1;
            } catch (bytes memory reason) {
                reentryError = reason;
            }
        } else if (current == 2) {
            try target.claim(claimAmount, claimProof) {
                reentrySucceeded += 1;
            } catch (bytes memory reason) {
                reentryError = reason;
            }
        }
    }
}
